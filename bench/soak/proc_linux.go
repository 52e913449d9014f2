package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill lanegate if the soak dies without
// stopping it, so that no lanegate outlives a killed soak.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
