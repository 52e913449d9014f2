package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/joho/godotenv"
)

// LoadOptions says where Load reads variables from.
type LoadOptions struct {
	// EnvFile is an optional dotenv file. Its values are read first and the
	// real environment wins, so a deploy can override one value without
	// editing the file.
	EnvFile string
	// Environ holds "KEY=VALUE" pairs: os.Environ() in production. Nil
	// means an empty environment, so tests never see the caller's.
	Environ []string
}

// Load reads the configuration, derives what was left unset and validates
// the result. The error joins every problem found, each naming its
// variable; on error the returned Config is the zero value.
func Load(opts LoadOptions) (Config, error) {
	vars, origin, err := gather(opts)
	if err != nil {
		return Config{}, err
	}
	cfg, failed, errs := parse(vars)
	cfg.origin = origin
	errs = append(unknownVariables(vars, origin), errs...)
	verrs, warnings := cfg.validate(failed)
	errs = append(errs, verrs...)
	cfg.warnings = warnings
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	// Validate above covers everything admission.Limits.Validate checks;
	// this only fires if the two ever drift apart.
	if err := cfg.Limits().Validate(); err != nil {
		return Config{}, fmt.Errorf("admission limits derived from the configuration are inconsistent: %w", err)
	}
	return cfg, nil
}

// gather merges the env file under the environment. origin records where
// each non-empty LANEGATE_ variable came from: "" for the environment,
// else the file's path.
func gather(opts LoadOptions) (vars, origin map[string]string, err error) {
	// Never nil: the env library reads os.Environ when given a nil map.
	vars = make(map[string]string)
	origin = make(map[string]string)
	if opts.EnvFile != "" {
		file, err := godotenv.Read(opts.EnvFile)
		if err != nil {
			return nil, nil, fmt.Errorf("reading env file %s: %w", opts.EnvFile, envFileError(opts.EnvFile, err))
		}
		for k, v := range file {
			if !validName(k) {
				// "LANEGATE IDENTITY_SECRET=..." would otherwise be
				// dropped without a word, as not of lanegate's prefix.
				return nil, nil, fmt.Errorf("reading env file %s: %q is not a variable name", opts.EnvFile, k)
			}
			vars[k] = v
			origin[k] = opts.EnvFile
		}
	}
	for _, kv := range opts.Environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		vars[k] = v
		origin[k] = ""
	}
	for k, v := range vars {
		if !strings.HasPrefix(k, prefix) || v == "" {
			// An empty variable counts as unset, as it does for the
			// env library's defaults.
			delete(origin, k)
		}
	}
	return vars, origin, nil
}

// unknownVariables reports LANEGATE_ variables that lanegate does not read,
// which are almost always typos that would otherwise be silently ignored.
func unknownVariables(vars, origin map[string]string) []error {
	known := make(map[string]bool)
	var names []string
	for _, v := range Variables() {
		known[v.Name] = true
		names = append(names, v.Name)
	}
	var unknown []string
	for k := range vars {
		if strings.HasPrefix(k, prefix) && !known[k] {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	var errs []error
	for _, k := range unknown {
		where := ""
		if path := origin[k]; path != "" {
			where = " in " + path
		}
		hint := ""
		if s := closest(k, names); s != "" {
			hint = fmt.Sprintf(" (did you mean %s?)", s)
		}
		errs = append(errs, fmt.Errorf("%s%s: unknown variable%s", k, where, hint))
	}
	return errs
}

// closest returns the name nearest to s by edit distance, if it is near
// enough to be a plausible typo.
func closest(s string, names []string) string {
	best, bestDist := "", 4
	for _, n := range names {
		if d := editDistance(s, n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// varError is a value that could not be parsed, worded to start with the
// variable so the operator knows what to fix.
type varError struct {
	name, value, reason string
}

func (e *varError) Error() string {
	return fmt.Sprintf("%s=%q: %s", e.name, e.value, e.reason)
}

// parse fills a Config from vars. It returns the variables that failed to
// parse, so that validation can skip checks that would only repeat the
// failure in other words.
func parse(vars map[string]string) (Config, map[string]bool, []error) {
	// The env library's errors name the Go field, not the variable, and
	// the lanes share field names. Its OnSet hook runs just before each
	// variable's value is parsed, so it tells the parsers below which
	// variable they are reading.
	var current string
	fail := func(value, reason string) error {
		return &varError{name: current, value: value, reason: reason}
	}
	opts := env.Options{
		Environment: vars,
		Prefix:      prefix,
		OnSet:       func(name string, _ any, _ bool) { current = name },
		FuncMap:     parsers(fail),
	}
	var cfg Config
	err := env.ParseWithOptions(&cfg, opts)
	failed := make(map[string]bool)
	if err == nil {
		return cfg, failed, nil
	}
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return cfg, failed, []error{fmt.Errorf("parsing environment: %w", err)}
	}
	var errs []error
	for _, e := range agg.Errors {
		// ParseError does not unwrap, so look inside it by hand.
		inner := e
		if pe, ok := e.(env.ParseError); ok {
			inner = pe.Err
		}
		var ve *varError
		if errors.As(inner, &ve) {
			failed[ve.name] = true
			errs = append(errs, ve)
			continue
		}
		errs = append(errs, fmt.Errorf("parsing environment: %w", e))
	}
	return cfg, failed, errs
}

// parsers returns a parser for each type in Config. They replace the env
// library's so that every message is the variable, its value and a reason
// an operator can act on.
func parsers(fail func(value, reason string) error) map[reflect.Type]env.ParserFunc {
	return map[reflect.Type]env.ParserFunc{
		reflect.TypeFor[int](): func(v string) (any, error) {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return nil, fail(v, numError(err, "an integer"))
			}
			return n, nil
		},
		reflect.TypeFor[int64](): func(v string) (any, error) {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return nil, fail(v, numError(err, "an integer"))
			}
			return n, nil
		},
		reflect.TypeFor[float64](): func(v string) (any, error) {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, fail(v, "not a number")
			}
			return f, nil
		},
		reflect.TypeFor[bool](): func(v string) (any, error) {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return nil, fail(v, "not a boolean (want true or false)")
			}
			return b, nil
		},
		reflect.TypeFor[time.Duration](): func(v string) (any, error) {
			s := strings.TrimSpace(v)
			d, err := time.ParseDuration(s)
			if err != nil {
				if _, numErr := strconv.ParseFloat(s, 64); numErr == nil {
					return nil, fail(v, fmt.Sprintf("a duration needs a unit, e.g. %ss", s))
				}
				return nil, fail(v, "not a duration (want e.g. 15s, 500ms or 2m)")
			}
			return d, nil
		},
		reflect.TypeFor[url.URL](): func(v string) (any, error) {
			u, err := url.Parse(strings.TrimSpace(v))
			if err != nil {
				return nil, fail(v, "not a URL (want e.g. http://127.0.0.1:8000)")
			}
			return *u, nil
		},
		reflect.TypeFor[Mode](): func(v string) (any, error) {
			m, err := ParseMode(strings.TrimSpace(v))
			if err != nil {
				return nil, fail(v, "not an admission mode (want enforce, shadow or off)")
			}
			return m, nil
		},
		// The whole list is parsed here, not element by element, so the
		// error can name every bad entry and bare addresses can become
		// single-address prefixes.
		reflect.TypeFor[[]netip.Prefix](): func(v string) (any, error) {
			var out []netip.Prefix
			var bad []string
			for _, s := range splitList(v) {
				p, err := parsePrefix(s)
				if err != nil {
					bad = append(bad, strconv.Quote(s))
					continue
				}
				out = append(out, p)
			}
			if len(bad) > 0 {
				return nil, fail(v, fmt.Sprintf("%s: not an IP address or CIDR prefix", strings.Join(bad, ", ")))
			}
			return out, nil
		},
		reflect.TypeFor[[]string](): func(v string) (any, error) {
			return splitList(v), nil
		},
	}
}

// numError words a strconv failure.
func numError(err error, what string) string {
	if errors.Is(err, strconv.ErrRange) {
		return "out of range"
	}
	return "not " + what
}

// splitList splits a comma-separated list, trimming space and dropping
// empty entries so a trailing comma is harmless.
func splitList(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parsePrefix parses a CIDR prefix or a bare address, which stands for
// itself alone (/32 or /128). The prefix is masked so that 10.1.2.3/8 and
// 10.0.0.0/8 are the same network.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// envFileError rewrites a syntax error from the env file without the text
// the parser quotes: the line may hold a secret, and the error goes to logs
// and /status. It names the line instead, found by parsing ever longer
// prefixes of the file until one fails.
func envFileError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return err // the file could not be read: nothing of it is quoted
	}
	reason, _, _ := strings.Cut(err.Error(), "\"")
	reason = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(reason), "near"))
	if reason == "" {
		reason = "syntax error"
	}
	data, rerr := os.ReadFile(path)
	if rerr != nil {
		return errors.New(reason)
	}
	lines := strings.SplitAfter(string(data), "\n")
	for n := 1; n <= len(lines); n++ {
		if _, perr := godotenv.Unmarshal(strings.Join(lines[:n], "")); perr != nil {
			return fmt.Errorf("line %d: %s (the line is not repeated: it may hold a secret)", n, reason)
		}
	}
	return fmt.Errorf("%s (the line is not repeated: it may hold a secret)", reason)
}

// validName reports whether k is a shell variable name.
func validName(k string) bool {
	for i, r := range k {
		if r != '_' && (r < 'A' || r > 'Z') && (r < 'a' || r > 'z') && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return k != ""
}
