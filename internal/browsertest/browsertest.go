// Package browsertest runs Debian's headless Chromium for tests that load
// lanegate's pages, talking to 127.0.0.1 only: every other host name
// resolves to nothing, and no proxy or background service of the browser
// is used.
package browsertest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"
)

// Chromium is the browser the tests run: Debian's chromium package.
const Chromium = "/usr/bin/chromium"

// Require skips t when Chromium is not installed, or fails it when
// TEST_REQUIRE_BROWSER=1 says it must be (CI sets it).
func Require(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(Chromium); err != nil {
		if os.Getenv("TEST_REQUIRE_BROWSER") == "1" {
			t.Fatalf("TEST_REQUIRE_BROWSER=1 but %s is missing: %v (apt-get install chromium)", Chromium, err)
		}
		t.Skipf("%s is missing (apt-get install chromium; TEST_REQUIRE_BROWSER=1 makes this a failure)", Chromium)
	}
}

// Options are the allocator options of a headless, loopback-only Chromium
// with a window of width × height and its profile in a temporary
// directory of t.
func Options(t testing.TB, width, height int) []chromedp.ExecAllocatorOption {
	return append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(Chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("no-proxy-server", true),
		// Only 127.0.0.1: no other name resolves.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
	)
}

// Screenshot saves png as name in dir and, when LANEGATE_SCREENSHOT_DIR is
// set, there too, and logs where.
func Screenshot(t testing.TB, dir, name string, png []byte) {
	t.Helper()
	dirs := []string{dir}
	if d := os.Getenv("LANEGATE_SCREENSHOT_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("screenshot dir: %v", err)
		}
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatalf("write screenshot: %v", err)
		}
		t.Logf("screenshot: %s (%d bytes)", p, len(png))
	}
}
