package metrics

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Build says which lanegate a binary is, from what the Go toolchain
// recorded in it. lanegate version prints it, and /metrics exports it as
// lanegate_build_info, so a dashboard tells which build each replica runs.
type Build struct {
	// Version is the main module's version, "(devel)" when the build
	// recorded none.
	Version string
	// Revision is the VCS revision the binary was built from, cut to 12
	// characters and marked "+modified" when the tree had changes; empty
	// when the build recorded none.
	Revision string
	// GoVersion is the toolchain's, such as go1.26.0.
	GoVersion string
}

// ReadBuild reads the running binary's Build.
func ReadBuild() Build {
	b := Build{Version: "(devel)", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if bi.Main.Version != "" {
		b.Version = bi.Main.Version
	}
	dirty := ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
			if len(b.Revision) > 12 {
				b.Revision = b.Revision[:12]
			}
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+modified"
			}
		}
	}
	if b.Revision != "" {
		b.Revision += dirty
	}
	return b
}

// String is the version line lanegate version prints:
// "lanegate v1.2.3 (0123456789ab) go1.26.0".
func (b Build) String() string {
	out := "lanegate " + b.Version
	if b.Revision != "" {
		out += " (" + b.Revision + ")"
	}
	return out + " " + b.GoVersion
}

// buildInfo is lanegate_build_info: always 1, the build in its labels.
func buildInfo(b Build) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lanegate_build_info",
		Help: "Always 1; its labels say which lanegate runs: version, VCS revision (empty when not recorded) and Go version, as lanegate version prints them.",
		ConstLabels: prometheus.Labels{
			"version":   b.Version,
			"revision":  b.Revision,
			"goversion": b.GoVersion,
		},
	})
	g.Set(1)
	return g
}
