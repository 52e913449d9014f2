// Command lanegate is an auth-aware reverse proxy that admits requests to a
// Django app by lane, under a concurrency budget sized to its database pool.
//
//	lanegate [--env-file FILE]               serve
//	lanegate [--env-file FILE] config [--strict]
//	                                         print the effective configuration
//	lanegate config --markdown               print the configuration reference table
//	lanegate [--env-file FILE] doctor [--app URL]
//	                                         check the configuration against PgBouncer and the app
//
// Configuration comes from LANEGATE_* environment variables, over the env
// file: --env-file's, else /etc/lanegate/lanegate.env when it exists; see
// README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "lanegate:", err)
		}
		os.Exit(exitCode(err))
	}
}

// errReported means the failure was already explained on stderr.
var errReported = errors.New("reported")

// errStrict means lanegate config --strict found warnings, already
// printed: exit status 2, so that a check can tell them from an invalid
// configuration (1).
var errStrict = fmt.Errorf("warnings under --strict: %w", errReported)

// exitCode is the exit status for run's result.
func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errStrict):
		return 2
	}
	return 1
}

// defaultEnvFile is the env file read when --env-file is not given, if it
// exists: the container image ships its settings there, and a host
// install puts them there too. It is a variable so that a build can move
// it (go build -ldflags=-X=main.defaultEnvFile=PATH), as the tests do.
var defaultEnvFile = "/etc/lanegate/lanegate.env"

// run is the whole program; main only turns its error into an exit code.
func run(ctx context.Context, args []string) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return app{
		stdout:         os.Stdout,
		stderr:         os.Stderr,
		environ:        os.Environ(),
		reload:         hup,
		defaultEnvFile: defaultEnvFile,
	}.run(ctx, args)
}

// app holds what run takes from the process, so tests can supply their own.
type app struct {
	stdout, stderr io.Writer
	environ        []string
	reload         <-chan os.Signal
	// defaultEnvFile is read, when it exists, if --env-file is not
	// given; "" means none, as in tests unless they set it.
	defaultEnvFile string
	// started, when set, receives the bound addresses once serving.
	started func(addrs listenAddrs)
}
