package metrics

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lanegate/lanegate/admission"
	"github.com/lanegate/lanegate/config"
)

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(buildInfo(Build{Version: "v1.2.3", Revision: "0123456789ab+modified", GoVersion: "go1.26.0"})); err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP lanegate_build_info Always 1; its labels say which lanegate runs: version, VCS revision (empty when not recorded) and Go version, as lanegate version prints them.
# TYPE lanegate_build_info gauge
lanegate_build_info{goversion="go1.26.0",revision="0123456789ab+modified",version="v1.2.3"} 1
`), "lanegate_build_info"); err != nil {
		t.Error(err)
	}
}

// New exports the running binary's build, in the words of lanegate
// version.
func TestNewExportsBuildInfo(t *testing.T) {
	cfg, err := config.Load(config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := admission.New(cfg.Limits())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	reg := prometheus.NewRegistry()
	if _, err := New(reg, ctrl); err != nil {
		t.Fatal(err)
	}
	b := ReadBuild()
	if b.Version == "" || b.GoVersion != runtime.Version() {
		t.Errorf("ReadBuild() = %+v: want a version, and the Go version %s", b, runtime.Version())
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "lanegate_build_info" {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("lanegate_build_info: %d series, want 1", len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		want := map[string]string{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion}
		if len(got) != len(want) || got["version"] != want["version"] || got["revision"] != want["revision"] || got["goversion"] != want["goversion"] {
			t.Errorf("lanegate_build_info labels %v, want %v", got, want)
		}
		if v := m.GetGauge().GetValue(); v != 1 {
			t.Errorf("lanegate_build_info = %v, want 1", v)
		}
		return
	}
	t.Fatal("New did not register lanegate_build_info")
}

func TestBuildString(t *testing.T) {
	for b, want := range map[Build]string{
		{Version: "v1.2.3", Revision: "0123456789ab", GoVersion: "go1.26.0"}:           "lanegate v1.2.3 (0123456789ab) go1.26.0",
		{Version: "(devel)", Revision: "0123456789ab+modified", GoVersion: "go1.26.0"}: "lanegate (devel) (0123456789ab+modified) go1.26.0",
		{Version: "(devel)", GoVersion: "go1.26.0"}:                                    "lanegate (devel) go1.26.0",
	} {
		if got := b.String(); got != want {
			t.Errorf("%+v: got %q, want %q", b, got, want)
		}
	}
}
