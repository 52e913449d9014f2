package overhead

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The script runs under set -e: a knob's default must not end it before
// it starts (PERF=0 once did, silently, from inside a command
// substitution). DRYRUN=1 runs everything up to the first process.
func TestRunDefaultsGetPastTheKnobs(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{nil, "BUDGET=16 DURATION=10 ROUNDS=3 WARMUP=1 bench/overhead/run"},
		{[]string{"PERF=0"}, "BUDGET=16 DURATION=10 ROUNDS=3 WARMUP=1 bench/overhead/run"},
		{[]string{"PERF=1", "BUDGET=4"}, "BUDGET=4 DURATION=10 ROUNDS=3 WARMUP=1 PERF=1 bench/overhead/run"},
	} {
		cmd := exec.Command("bash", "run")
		cmd.Env = append(os.Environ(), append([]string{"DRYRUN=1", "PERF=", "BUDGET="}, tc.env...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%v bench/overhead/run: %v, output %q; want the invocation", tc.env, err, out)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%v bench/overhead/run: got %q, want %q", tc.env, got, tc.want)
		}
	}
}
