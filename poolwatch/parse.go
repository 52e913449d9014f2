package poolwatch

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The console's answers are parsed by column name, never by position:
// PgBouncer adds, renames and reorders columns between versions (1.18's
// SHOW POOLS has cl_active_cancel_req and sv_being_canceled, which older
// ones lack), and a reader that counted columns would silently read one
// figure as another. A required column that is missing, or a count that is
// not a count, is an error: a console that says something unexpected must
// not steer the budget.

// poolRow is one row of SHOW POOLS: one (database, user) pool.
type poolRow struct {
	database, user string
	// figures are the row's counts, maxwait and pool_mode, in the form
	// they are summed in.
	figures Pool
}

// databaseRow is one row of SHOW DATABASES.
type databaseRow struct {
	name string
	// poolSize is the effective size: the database's own pool_size, or
	// default_pool_size when it sets none.
	poolSize    int
	reservePool int
	// mode is the database's own pool_mode; empty when it follows the
	// default.
	mode string
}

// parsePools reads SHOW POOLS.
func parsePools(rows []map[string]string) ([]poolRow, error) {
	out := make([]poolRow, 0, len(rows))
	for i, r := range rows {
		f := fields{row: r}
		p := poolRow{database: f.text("database"), user: f.text("user"), figures: Pool{
			ClActive:  f.count("cl_active"),
			ClWaiting: f.count("cl_waiting"),
			SvActive:  f.count("sv_active"),
			SvIdle:    f.count("sv_idle"),
			SvUsed:    f.count("sv_used"),
			SvTested:  f.count("sv_tested"),
			SvLogin:   f.count("sv_login"),
			Mode:      f.optionalText("pool_mode"),
		}}
		// maxwait is whole seconds; maxwait_us (PgBouncer 1.8 and later)
		// the microseconds past them.
		p.figures.MaxWait = time.Duration(f.count("maxwait")) * time.Second
		if _, ok := r["maxwait_us"]; ok {
			p.figures.MaxWait += time.Duration(f.count("maxwait_us")) * time.Microsecond
		}
		if f.err != nil {
			return nil, fmt.Errorf("SHOW POOLS row %d: %w", i+1, f.err)
		}
		out = append(out, p)
	}
	return out, nil
}

// parseDatabases reads SHOW DATABASES.
func parseDatabases(rows []map[string]string) ([]databaseRow, error) {
	out := make([]databaseRow, 0, len(rows))
	for i, r := range rows {
		f := fields{row: r}
		d := databaseRow{
			name:     f.text("name"),
			poolSize: f.count("pool_size"),
			mode:     f.optionalText("pool_mode"),
		}
		// reserve_pool in 1.18; later versions call it reserve_pool_size.
		if _, ok := r["reserve_pool"]; ok {
			d.reservePool = f.count("reserve_pool")
		} else {
			d.reservePool = f.count("reserve_pool_size")
		}
		if f.err != nil {
			return nil, fmt.Errorf("SHOW DATABASES row %d: %w", i+1, f.err)
		}
		out = append(out, d)
	}
	return out, nil
}

// parseConfig reads the settings lanegate needs from SHOW CONFIG's key and
// value rows. Every one of them exists in every PgBouncer lanegate
// supports, so a missing one is an error.
func parseConfig(rows []map[string]string) (Settings, error) {
	values := make(map[string]string, len(rows))
	for i, r := range rows {
		f := fields{row: r}
		k, v := f.text("key"), f.optionalText("value")
		if f.err != nil {
			return Settings{}, fmt.Errorf("SHOW CONFIG row %d: %w", i+1, f.err)
		}
		values[k] = v
	}
	f := fields{row: values, what: "setting"}
	s := Settings{
		QueryWaitTimeout:   f.seconds("query_wait_timeout"),
		PoolMode:           f.text("pool_mode"),
		MaxClientConn:      f.count("max_client_conn"),
		DefaultPoolSize:    f.count("default_pool_size"),
		ReservePoolTimeout: f.seconds("reserve_pool_timeout"),
	}
	if f.err != nil {
		return Settings{}, fmt.Errorf("SHOW CONFIG: %w", f.err)
	}
	return s, nil
}

// fields reads named values of one row, keeping the first error so that a
// parser reads like a list of its columns.
type fields struct {
	row  map[string]string
	what string // what a value is called in errors: "column" unless set
	err  error
}

func (f *fields) fail(format string, args ...any) {
	if f.err == nil {
		f.err = fmt.Errorf(format, args...)
	}
}

func (f *fields) get(name string) (string, bool) {
	v, ok := f.row[name]
	if !ok {
		f.fail("no %s %q (has %s)", f.whatName(), name, names(f.row))
	}
	return v, ok
}

// text is a required value, which may be empty.
func (f *fields) text(name string) string {
	v, _ := f.get(name)
	return v
}

// optionalText is a value that older versions lack or that may be NULL:
// empty then.
func (f *fields) optionalText(name string) string { return f.row[name] }

// count is a required non-negative integer.
func (f *fields) count(name string) int {
	v, ok := f.get(name)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		f.fail("%s %q is %q, not a count", f.whatName(), name, v)
		return 0
	}
	return n
}

// seconds is a required duration in PgBouncer's notation.
func (f *fields) seconds(name string) time.Duration {
	v, ok := f.get(name)
	if !ok {
		return 0
	}
	d, err := parseSeconds(v)
	if err != nil {
		f.fail("%s %q: %w", f.whatName(), name, err)
		return 0
	}
	return d
}

func (f *fields) whatName() string {
	if f.what == "" {
		return "column"
	}
	return f.what
}

// names lists a row's keys, sorted, for an error that says what the
// console did send.
func names(row map[string]string) string {
	keys := make([]string, 0, len(row))
	for k := range row {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 20 {
		keys = append(keys[:20], "...")
	}
	return strings.Join(keys, ",")
}

// parseSeconds reads a time of PgBouncer's configuration. SHOW CONFIG in
// 1.18 shows seconds as a plain number, with a fraction when there is one
// ("120", "0.5"); a unit ("120s", "500ms", "2min") is accepted too, as the
// configuration file takes them and other versions may show them.
func parseSeconds(v string) (time.Duration, error) {
	num, unit := strings.TrimSpace(v), time.Second
	// The suffixes PgBouncer's configuration file takes for a time, as
	// PostgreSQL's does; "ms" and "us" before "s", which ends them.
	units := [...]struct {
		suffix string
		unit   time.Duration
	}{
		{"min", time.Minute},
		{"us", time.Microsecond},
		{"ms", time.Millisecond},
		{"s", time.Second},
		{"h", time.Hour},
		{"d", 24 * time.Hour},
	}
	for _, u := range units {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, unit = strings.TrimSpace(rest), u.unit
			break
		}
	}
	x, err := strconv.ParseFloat(num, 64)
	if err != nil || x < 0 || x != x {
		return 0, fmt.Errorf("%q is not a time", v)
	}
	// Bounded before the conversion, which would overflow silently.
	if x*float64(unit) > float64(1<<62) {
		return 0, fmt.Errorf("%q is too long a time", v)
	}
	return time.Duration(x * float64(unit)), nil
}
