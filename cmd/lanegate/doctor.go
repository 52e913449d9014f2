package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"

	"github.com/lanegate/lanegate/config"
	"github.com/lanegate/lanegate/doctor"
	"github.com/lanegate/lanegate/poolwatch"
)

// doctor runs lanegate doctor: the configuration as serve reads it,
// PgBouncer's console when LANEGATE_PGBOUNCER_URL is set and, with --app,
// the app server, held against one another. It prints every finding and
// returns errReported (exit status 1) when any is a FAIL; warnings alone
// exit 0. args are the words after "doctor"; --env-file may be given
// there too.
func (a app) doctor(ctx context.Context, envFile *envFileFlag, args []string) error {
	fs := flag.NewFlagSet("lanegate doctor", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Var(envFile, "env-file", envFileUsage)
	appURL := fs.String("app", "", "the app server's own `URL` (gunicorn's, as LANEGATE_UPSTREAM, with the path to request), probed for free worker threads; it holds as many threads as the budget for up to --timeout")
	timeout := fs.Duration("timeout", doctor.DefaultTimeout, "longest wait for each read of PgBouncer's console and each answer of the app probe")
	var connMaxAge doctor.ConnMaxAge
	fs.Func("conn-max-age", "Django's CONN_MAX_AGE (`seconds`, or None) when known; otherwise persistent connections are looked for in PgBouncer's SHOW CLIENTS", func(s string) error {
		v, err := doctor.ParseConnMaxAge(s)
		connMaxAge = v
		return err
	})
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lanegate [--env-file FILE] doctor [--app URL] [--timeout D] [--conn-max-age N]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return helpOrReported(err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errReported
	}
	if *timeout <= 0 {
		fmt.Fprintf(a.stderr, "lanegate doctor: --timeout %s: must be positive\n", *timeout)
		return errReported
	}
	opts := doctor.Options{ConnMaxAge: connMaxAge, Timeout: *timeout}
	if *appURL != "" {
		// The URL is not echoed: it might carry a password.
		u, err := url.Parse(*appURL)
		if err != nil || u.Host == "" {
			fmt.Fprintln(a.stderr, "lanegate doctor: --app: want the app server's URL, such as http://127.0.0.1:8000/")
			return errReported
		}
		opts.App = u
	}

	file := a.envFile(envFile)
	cfg, err := config.Load(config.LoadOptions{EnvFile: file, Environ: a.environ})
	if err != nil {
		fmt.Fprintf(a.stderr, "lanegate: invalid configuration:\n%v\n", err)
		return errReported
	}
	opts.Config = cfg
	if cfg.Watched() {
		var console closingConsole
		if r, err := newReader(cfg); err == nil {
			console = r
		} else {
			// The doctor reports it as the console's failure, and
			// checks what it can without.
			console = brokenConsole{err}
		}
		defer console.Close()
		opts.Console, opts.Consoles = console, redacted(cfg.PgBouncer.URLs)
	}

	report := doctor.Run(ctx, opts)
	source := "the environment"
	if file != "" {
		source = file
	}
	fmt.Fprintf(a.stdout, "lanegate doctor — configuration from %s\n", source)
	if err := report.Write(a.stdout); err != nil {
		return err
	}
	if report.Failed() {
		return errReported
	}
	return nil
}

// closingConsole is a console the doctor closes when done.
type closingConsole interface {
	doctor.Console
	Close() error
}

// brokenConsole stands for consoles that could not be opened: every read
// fails with why.
type brokenConsole struct{ err error }

func (b brokenConsole) Read(context.Context) (poolwatch.Reading, error) {
	return poolwatch.Reading{}, b.err
}

func (b brokenConsole) Show(context.Context, string) ([][]map[string]string, error) {
	return nil, b.err
}

func (b brokenConsole) Close() error { return nil }
