package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/lanegate/lanegate/config"
)

// listenAddrs are the addresses actually bound, which differ from the
// configured ones when a port is 0.
type listenAddrs struct {
	Proxy, Admin string
}

func (a app) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lanegate", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	envFile := &envFileFlag{}
	fs.Var(envFile, "env-file", envFileUsage)
	markdown := fs.Bool("markdown", false, "with config: print the reference table of every variable as Markdown")
	strict := fs.Bool("strict", false, "with config: exit with status 2 when serve would warn about the configuration")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() { usage(fs) }
	if err := fs.Parse(args); err != nil {
		return helpOrReported(err)
	}
	if *showVersion {
		fmt.Fprintln(a.stdout, version())
		return nil
	}
	cmd := "serve"
	rest := fs.Args()
	if len(rest) > 0 {
		cmd, rest = rest[0], rest[1:]
	}
	switch cmd {
	case "help":
		fs.SetOutput(a.stdout)
		usage(fs)
		return nil
	case "version":
		fmt.Fprintln(a.stdout, version())
		return nil
	case "serve", "config", "doctor", "healthcheck":
	default:
		fmt.Fprintf(a.stderr, "lanegate: unknown command %q\n\n", cmd)
		usage(fs)
		return errReported
	}
	if cmd == "doctor" { // before the parse below: it has flags of its own
		return a.doctor(ctx, envFile, rest)
	}
	// Flags may follow the command too: lanegate config --markdown.
	if err := fs.Parse(rest); err != nil {
		return helpOrReported(err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errReported
	}
	if *strict && cmd != "config" {
		// Not ignored: it would look like a check that passed.
		fmt.Fprintf(a.stderr, "lanegate: --strict applies to the config command, not %s\n", cmd)
		return errReported
	}
	file := a.envFile(envFile)
	switch cmd {
	case "config":
		return a.printConfig(ctx, file, *markdown, *strict)
	case "healthcheck":
		return a.healthcheck(ctx, file)
	}
	// serve: the commands were checked above.
	cfg, err := config.Load(config.LoadOptions{EnvFile: file, Environ: a.environ})
	if err != nil {
		fmt.Fprintf(a.stderr, "lanegate: invalid configuration:\n%v\n", err)
		return errReported
	}
	return a.serve(ctx, cfg, file)
}

// helpOrReported turns a flag parsing error, which the flag set has
// already explained with the usage, into run's result: asking for help
// with -h or -help succeeds.
func helpOrReported(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return errReported
}

// printConfig prints the effective configuration, sized from PgBouncer's
// pool when it watches one, as serve would size it, and on stderr the
// warnings serve would log as it started on it. When the configuration
// is invalid it prints nothing on stdout and reports every problem on
// stderr. With strict, warnings make it return errStrict.
func (a app) printConfig(ctx context.Context, envFile string, markdown, strict bool) error {
	if markdown {
		fmt.Fprint(a.stdout, config.MarkdownTable())
		return nil
	}
	cfg, err := config.Load(config.LoadOptions{EnvFile: envFile, Environ: a.environ})
	if err != nil {
		fmt.Fprintf(a.stderr, "lanegate: invalid configuration:\n%v\n", err)
		return errReported
	}
	reader, err := newReader(cfg)
	if err != nil {
		fmt.Fprintf(a.stderr, "lanegate: %v\n", err)
		return errReported
	}
	var sizeErr error
	if reader != nil {
		defer reader.Close()
		// On error serve starts on these values too, and warns; so does
		// this, below.
		cfg, sizeErr = sizeFromPool(ctx, cfg, reader)
	}
	if err := cfg.Print(a.stdout); err != nil {
		return err
	}
	warnings := startWarnings(cfg, sizeErr)
	for _, w := range warnings {
		fmt.Fprintf(a.stderr, "lanegate: warning: %s\n", w)
	}
	if strict && len(warnings) > 0 {
		return errStrict
	}
	return nil
}

func newLogger(c config.Log, w zapcore.WriteSyncer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.MillisDurationEncoder
	enc := zapcore.NewJSONEncoder(ec)
	if c.Format == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	// No sampling: an access log that drops lines under load lies exactly
	// when it is needed.
	return zap.New(zapcore.NewCore(enc, w, level), zap.ErrorOutput(w)), nil
}
