package poolwatch

import (
	"maps"
	"strings"
	"testing"
	"time"
)

// poolRow118 is a SHOW POOLS row as PgBouncer 1.18 sends it.
func poolRow118() map[string]string {
	return map[string]string{
		"database": "app", "user": "django",
		"cl_active": "3", "cl_waiting": "2", "cl_active_cancel_req": "0", "cl_waiting_cancel_req": "0",
		"sv_active": "3", "sv_active_cancel": "0", "sv_being_canceled": "0",
		"sv_idle": "1", "sv_used": "4", "sv_tested": "5", "sv_login": "6",
		"maxwait": "2", "maxwait_us": "500000", "pool_mode": "session",
	}
}

// with returns row changed by set, where a value of "<drop>" removes the
// column.
func with(row map[string]string, set map[string]string) map[string]string {
	out := maps.Clone(row)
	for k, v := range set {
		if v == "<drop>" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func TestParsePools(t *testing.T) {
	want118 := poolRow{database: "app", user: "django", figures: Pool{
		ClActive: 3, ClWaiting: 2, SvActive: 3, SvIdle: 1, SvUsed: 4, SvTested: 5, SvLogin: 6,
		MaxWait: 2500 * time.Millisecond, Mode: "session",
	}}
	tests := []struct {
		name    string
		row     map[string]string
		want    poolRow
		wantErr string // a part of the error; "" for none
	}{
		{name: "1.18 row", row: poolRow118(), want: want118},
		{
			name: "extra columns are ignored",
			row:  with(poolRow118(), map[string]string{"cl_cancel_req": "9", "load_balance_hosts": "x"}),
			want: want118,
		},
		{
			name: "no maxwait_us: whole seconds",
			row:  with(poolRow118(), map[string]string{"maxwait_us": "<drop>"}),
			want: func() poolRow { p := want118; p.figures.MaxWait = 2 * time.Second; return p }(),
		},
		{
			name: "no pool_mode: empty",
			row:  with(poolRow118(), map[string]string{"pool_mode": "<drop>"}),
			want: func() poolRow { p := want118; p.figures.Mode = ""; return p }(),
		},
		{name: "missing sv_idle", row: with(poolRow118(), map[string]string{"sv_idle": "<drop>"}), wantErr: `no column "sv_idle"`},
		{name: "missing user", row: with(poolRow118(), map[string]string{"user": "<drop>"}), wantErr: `no column "user"`},
		{name: "missing maxwait", row: with(poolRow118(), map[string]string{"maxwait": "<drop>"}), wantErr: `no column "maxwait"`},
		{name: "word for a count", row: with(poolRow118(), map[string]string{"cl_waiting": "many"}), wantErr: `"cl_waiting" is "many", not a count`},
		{name: "NULL for a count", row: with(poolRow118(), map[string]string{"sv_active": ""}), wantErr: `"sv_active" is "", not a count`},
		{name: "negative count", row: with(poolRow118(), map[string]string{"cl_active": "-1"}), wantErr: "not a count"},
		{name: "fraction for a count", row: with(poolRow118(), map[string]string{"sv_login": "1.5"}), wantErr: "not a count"},
		{name: "padded count", row: with(poolRow118(), map[string]string{"sv_login": " 1"}), wantErr: "not a count"},
		{name: "bad maxwait_us", row: with(poolRow118(), map[string]string{"maxwait_us": "x"}), wantErr: "maxwait_us"},
		{name: "huge count", row: with(poolRow118(), map[string]string{"sv_used": "99999999999999999999"}), wantErr: "not a count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePools([]map[string]string{tt.row})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "SHOW POOLS row 1") {
					t.Errorf("error %q does not say which row", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if len(got) != 1 || got[0] != tt.want {
				t.Fatalf("got %+v, want [%+v]", got, tt.want)
			}
		})
	}
}

func TestParsePoolsNone(t *testing.T) {
	got, err := parsePools(nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("got %v, %v; want no pools and no error", got, err)
	}
}

func TestParseDatabases(t *testing.T) {
	// SHOW DATABASES of 1.18: NULL host and pool_mode come as "".
	row := map[string]string{
		"name": "app", "host": "127.0.0.1", "port": "5432", "database": "app", "force_user": "",
		"pool_size": "20", "min_pool_size": "0", "reserve_pool": "5", "pool_mode": "",
		"max_connections": "0", "current_connections": "3", "paused": "0", "disabled": "0",
	}
	tests := []struct {
		name    string
		row     map[string]string
		want    databaseRow
		wantErr string
	}{
		{name: "1.18 row", row: row, want: databaseRow{name: "app", poolSize: 20, reservePool: 5}},
		{
			name: "own pool_mode",
			row:  with(row, map[string]string{"pool_mode": "transaction"}),
			want: databaseRow{name: "app", poolSize: 20, reservePool: 5, mode: "transaction"},
		},
		{
			name: "reserve_pool_size, as later versions name it",
			row:  with(row, map[string]string{"reserve_pool": "<drop>", "reserve_pool_size": "7"}),
			want: databaseRow{name: "app", poolSize: 20, reservePool: 7},
		},
		{name: "missing pool_size", row: with(row, map[string]string{"pool_size": "<drop>"}), wantErr: `no column "pool_size"`},
		{name: "missing name", row: with(row, map[string]string{"name": "<drop>"}), wantErr: `no column "name"`},
		{name: "no reserve pool at all", row: with(row, map[string]string{"reserve_pool": "<drop>"}), wantErr: `no column "reserve_pool_size"`},
		{name: "pool_size not a number", row: with(row, map[string]string{"pool_size": "twenty"}), wantErr: "not a count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDatabases([]map[string]string{tt.row})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if len(got) != 1 || got[0] != tt.want {
				t.Fatalf("got %+v, want [%+v]", got, tt.want)
			}
		})
	}
}

// config118 is the part of 1.18's SHOW CONFIG that matters, as key, value,
// default and changeable rows, with a few others around it.
func config118(set map[string]string) []map[string]string {
	values := map[string]string{
		"admin_users": "admin", "auth_type": "md5",
		"query_wait_timeout": "120", "pool_mode": "session", "max_client_conn": "100",
		"default_pool_size": "20", "reserve_pool_timeout": "5", "stats_period": "60",
	}
	for k, v := range set {
		if v == "<drop>" {
			delete(values, k)
		} else {
			values[k] = v
		}
	}
	var rows []map[string]string
	for k, v := range values {
		rows = append(rows, map[string]string{"key": k, "value": v, "default": "", "changeable": "yes"})
	}
	return rows
}

func TestParseConfig(t *testing.T) {
	want := Settings{
		QueryWaitTimeout: 120 * time.Second, PoolMode: "session", MaxClientConn: 100,
		DefaultPoolSize: 20, ReservePoolTimeout: 5 * time.Second,
	}
	got, err := parseConfig(config118(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}

	bad := []struct {
		name    string
		set     map[string]string
		wantErr string
	}{
		{"no query_wait_timeout", map[string]string{"query_wait_timeout": "<drop>"}, `no setting "query_wait_timeout"`},
		{"no pool_mode", map[string]string{"pool_mode": "<drop>"}, `no setting "pool_mode"`},
		{"no default_pool_size", map[string]string{"default_pool_size": "<drop>"}, `no setting "default_pool_size"`},
		{"max_client_conn not a number", map[string]string{"max_client_conn": "lots"}, `setting "max_client_conn" is "lots", not a count`},
		{"reserve_pool_timeout not a time", map[string]string{"reserve_pool_timeout": "soon"}, `setting "reserve_pool_timeout": "soon" is not a time`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(config118(tt.set))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}

	t.Run("a row without key", func(t *testing.T) {
		_, err := parseConfig([]map[string]string{{"name": "pool_mode", "value": "session"}})
		if err == nil || !strings.Contains(err.Error(), `no column "key"`) {
			t.Fatalf("got error %v, want one about the missing key column", err)
		}
	})
}

func TestParseSeconds(t *testing.T) {
	good := []struct {
		in   string
		want time.Duration
	}{
		{"120", 120 * time.Second}, // 1.18's SHOW CONFIG
		{"0", 0},                   // disabled
		{"0.5", 500 * time.Millisecond},
		{"1.25", 1250 * time.Millisecond},
		{"120s", 120 * time.Second},
		{"120 s", 120 * time.Second},
		{"500ms", 500 * time.Millisecond},
		{"250us", 250 * time.Microsecond},
		{"2min", 2 * time.Minute},
		{"1h", time.Hour},
		{"1d", 24 * time.Hour},
	}
	for _, tt := range good {
		got, err := parseSeconds(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseSeconds(%q): got %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "s", "abc", "-1", "-5s", "NaN", "Inf", "1e300", "10 parsecs", "1,5"} {
		if got, err := parseSeconds(in); err == nil {
			t.Errorf("parseSeconds(%q): got %v, want an error", in, got)
		}
	}
}
