package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReloadOnSIGHUP(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	file := filepath.Join(t.TempDir(), "lanegate.env")
	// The upstream comes from the file, so that changing it there is a
	// change the reload must refuse to apply.
	writeFile(t, file, "LANEGATE_UPSTREAM="+up.URL+"\nLANEGATE_BUDGET=4\n")
	env := []string{"LANEGATE_LISTEN=" + proxyListen, "LANEGATE_ADMIN_LISTEN=" + adminListen}
	in := start(ctx, t, env, "--env-file", file)
	c := newClient(t)

	if st := status(ctx, t, c, in); st.Budget != 4 || st.Mode != "enforce" {
		t.Fatalf("/status at start: got budget %d, mode %q; want 4, enforce", st.Budget, st.Mode)
	}

	slow := goGet(ctx, c, in.proxyURL("/slow/across-reload"))
	recv(ctx, t, up.arrived, "the slow request at the upstream")

	t.Run("valid", func(t *testing.T) {
		writeFile(t, file, "LANEGATE_UPSTREAM="+up.URL+"\nLANEGATE_BUDGET=6\nLANEGATE_ADMISSION=shadow\n")
		mark := in.stderr.Len()
		in.sighup(ctx, t)
		in.stderr.waitFor(ctx, t, mark, "configuration reloaded")
		st := status(ctx, t, c, in)
		if st.Budget != 6 || st.Mode != "shadow" {
			t.Errorf("/status after reload: got budget %d, mode %q; want 6, shadow", st.Budget, st.Mode)
		}
		if st.InFlight != 1 {
			t.Errorf("/status after reload: got %d in flight, want the 1 admitted before it", st.InFlight)
		}
		if r := st.LastReload; r == nil || !r.OK || r.Error != "" {
			t.Errorf("/status last_reload after a good reload: got %+v, want ok", r)
		}
		if log := in.stderr.since(mark); strings.Contains(log, "only on restart") {
			t.Errorf("reload warns about a restart, want no warning when only limits changed:\n%s", log)
		}
	})

	t.Run("request in flight across the reload", func(t *testing.T) {
		notYet(t, slow, "the slow request before the upstream answers")
		up.unblock()
		r := recv(ctx, t, slow, "the slow request")
		if r.err != nil || r.status != http.StatusOK || r.body != "slow /slow/across-reload" {
			t.Errorf("request across the reload: got %d %q, error %v; want 200", r.status, r.body, r.err)
		}
		if st := status(ctx, t, c, in); st.InFlight != 0 {
			t.Errorf("/status once it completed: got %d in flight, want 0", st.InFlight)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		writeFile(t, file, "LANEGATE_UPSTREAM="+up.URL+"\nLANEGATE_BUDGET=abc\n")
		mark := in.stderr.Len()
		in.sighup(ctx, t)
		in.stderr.waitFor(ctx, t, mark, "reload refused")
		if log := in.stderr.since(mark); !strings.Contains(log, "LANEGATE_BUDGET") {
			t.Errorf("refusal does not name LANEGATE_BUDGET:\n%s", log)
		}
		st := status(ctx, t, c, in)
		if st.Budget != 6 || st.Mode != "shadow" {
			t.Errorf("/status after a refused reload: got budget %d, mode %q; want the running 6, shadow", st.Budget, st.Mode)
		}
		if r := st.LastReload; r == nil || r.OK || !strings.Contains(r.Error, "LANEGATE_BUDGET") || r.At.IsZero() {
			t.Errorf("/status last_reload after a refused reload: got %+v, want not ok, naming LANEGATE_BUDGET", r)
		}
	})

	t.Run("broken file holding a secret", func(t *testing.T) {
		const secret = "do-not-show-this-secret-anywhere-0123456789"
		writeFile(t, file, "LANEGATE_UPSTREAM="+up.URL+"\nLANEGATE_IDENTITY_SECRET=\""+secret+"\n")
		mark := in.stderr.Len()
		in.sighup(ctx, t)
		in.stderr.waitFor(ctx, t, mark, "reload refused")
		if log := in.stderr.since(mark); strings.Contains(log, secret[:12]) {
			t.Errorf("the refusal logs the file's secret:\n%s", log)
		}
		r := do(ctx, c, http.MethodGet, in.adminURL("/status"), "")
		if r.err != nil || r.status != http.StatusOK || strings.Contains(r.body, secret[:12]) || !strings.Contains(r.body, "line 2") {
			t.Errorf("/status after a broken file: got %d, error %v, want the refusal by line number and no secret:\n%s", r.status, r.err, r.body)
		}
	})

	t.Run("missing file", func(t *testing.T) {
		gone := file + ".moved"
		renameFile(t, file, gone)
		defer renameFile(t, gone, file)
		mark := in.stderr.Len()
		in.sighup(ctx, t)
		in.stderr.waitFor(ctx, t, mark, "reload refused")
		if st := status(ctx, t, c, in); st.Budget != 6 {
			t.Errorf("/status after a refused reload: got budget %d, want the running 6", st.Budget)
		}
	})

	t.Run("upstream change needs a restart", func(t *testing.T) {
		writeFile(t, file, "LANEGATE_UPSTREAM=http://127.0.0.1:1\nLANEGATE_BUDGET=5\n")
		mark := in.stderr.Len()
		in.sighup(ctx, t)
		in.stderr.waitFor(ctx, t, mark, "configuration reloaded")
		if log := in.stderr.since(mark); !strings.Contains(log, "only on restart") {
			t.Errorf("reload does not warn that the upstream changes only on restart:\n%s", log)
		}
		st := status(ctx, t, c, in)
		if st.Budget != 5 || st.Mode != "enforce" {
			t.Errorf("/status after reload: got budget %d, mode %q; want 5, enforce", st.Budget, st.Mode)
		}
		if r := st.LastReload; r == nil || !r.OK {
			t.Errorf("/status last_reload after a good reload following refused ones: got %+v, want ok", r)
		}
		r := do(ctx, c, http.MethodGet, in.proxyURL("/fast/after"), "")
		if r.err != nil || r.status != http.StatusOK || r.body != "fast /fast/after" {
			t.Errorf("request after reload: got %d %q, error %v; want 200 from the running upstream", r.status, r.body, r.err)
		}
	})

	t.Run("a reload's warnings are logged", func(t *testing.T) {
		// A budget past the pool with a queue timeout not under PgBouncer's
		// query_wait_timeout is doubtful, not wrong: applied, and said.
		writeFile(t, file, "LANEGATE_UPSTREAM="+up.URL+"\nLANEGATE_BUDGET=5\nLANEGATE_DB_POOL_SIZE=4\n"+
			"LANEGATE_PGBOUNCER_QUERY_WAIT_TIMEOUT=3s\nLANEGATE_CORE_QUEUE_TIMEOUT=5s\n")
		mark := in.stderr.Len()
		in.sighup(ctx, t)
		in.stderr.waitFor(ctx, t, mark, "configuration reloaded")
		if log := in.stderr.since(mark); !strings.Contains(log, "LANEGATE_CORE_QUEUE_TIMEOUT") || !strings.Contains(log, "is not shorter than") {
			t.Errorf("reload does not log the new configuration's warning about LANEGATE_CORE_QUEUE_TIMEOUT:\n%s", log)
		}
	})

	c.Transport.(*http.Transport).CloseIdleConnections()
	in.cancel()
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run: got %v, want nil", err)
	}
}

func TestAdmissionModeSwitch(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	const token = "t0ken"
	in := start(ctx, t, environ(up.URL, "LANEGATE_ADMIN_TOKEN="+token))
	c := newClient(t)
	auth := []string{"Authorization", "Bearer " + token}

	put := func(body string, header ...string) result {
		return do(ctx, c, http.MethodPut, in.adminURL("/admission"), body, header...)
	}
	mode := func() string {
		t.Helper()
		return status(ctx, t, c, in, auth...).Mode
	}

	if r := put("off"); r.status != http.StatusUnauthorized {
		t.Errorf("PUT /admission without the token: got %d %q, error %v; want 401", r.status, r.body, r.err)
	}
	if r := put("off", "Authorization", "Bearer wrong"); r.status != http.StatusUnauthorized {
		t.Errorf("PUT /admission with a wrong token: got %d %q, error %v; want 401", r.status, r.body, r.err)
	}
	if r := put("sideways", auth...); r.status != http.StatusBadRequest {
		t.Errorf("PUT /admission sideways: got %d %q, error %v; want 400", r.status, r.body, r.err)
	}
	if got := mode(); got != "enforce" {
		t.Fatalf("mode after refused switches: got %q, want enforce", got)
	}

	if r := put("off\n", auth...); r.err != nil || r.status != http.StatusOK || strings.TrimSpace(r.body) != "off" {
		t.Fatalf("PUT /admission off: got %d %q, error %v; want 200 off", r.status, r.body, r.err)
	}
	if got := mode(); got != "off" {
		t.Errorf("/status after PUT off: got mode %q, want off", got)
	}
	if r := do(ctx, c, http.MethodGet, in.adminURL("/admission"), "", auth...); strings.TrimSpace(r.body) != "off" {
		t.Errorf("GET /admission: got %d %q, error %v; want off", r.status, r.body, r.err)
	}
	if r := do(ctx, c, http.MethodGet, in.proxyURL("/fast/page"), ""); r.err != nil || r.status != http.StatusOK {
		t.Errorf("request in mode off: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	st := status(ctx, t, c, in, auth...)
	if core := st.Lanes["core"]; core.Decisions["pass"] != 1 || core.Admitted != 0 {
		t.Errorf("/status after a request in mode off: got core decisions %v, want 1 pass and nothing admitted", core.Decisions)
	}

	if r := put("enforce", auth...); r.status != http.StatusOK {
		t.Errorf("PUT /admission enforce: got %d %q, error %v; want 200", r.status, r.body, r.err)
	}
	if got := mode(); got != "enforce" {
		t.Errorf("/status after PUT enforce: got mode %q, want enforce", got)
	}
}

func renameFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

// An operator's run-time switch survives a reload whose file did not
// change the mode, and a restart-only change is named in the warning.
func TestReloadKeepsRuntimeMode(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	file := filepath.Join(t.TempDir(), "lanegate.env")
	writeFile(t, file, "LANEGATE_UPSTREAM="+up.URL+"\nLANEGATE_BUDGET=4\n")
	env := []string{"LANEGATE_LISTEN=" + proxyListen, "LANEGATE_ADMIN_LISTEN=" + adminListen}
	in := start(ctx, t, env, "--env-file", file)
	c := newClient(t)
	if r := do(ctx, c, http.MethodPut, in.adminURL("/admission"), "off"); r.status != http.StatusOK {
		t.Fatalf("PUT /admission off: got %d", r.status)
	}
	writeFile(t, file, "LANEGATE_UPSTREAM="+up.URL+"\nLANEGATE_BUDGET=5\nLANEGATE_MAX_BODY_BYTES=1024\n")
	mark := in.stderr.Len()
	in.sighup(ctx, t)
	in.stderr.waitFor(ctx, t, mark, "configuration reloaded")
	if st := status(ctx, t, c, in); st.Mode != "off" || st.Budget != 5 {
		t.Fatalf("after reload: got mode %q budget %d; want off (kept) and 5", st.Mode, st.Budget)
	}
	if log := in.stderr.since(mark); !strings.Contains(log, "LANEGATE_MAX_BODY_BYTES") {
		t.Fatalf("reload log does not name the restart-only change:\n%s", log)
	}
}
