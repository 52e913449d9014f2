package upstream

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The transport starts goroutines (holds, idle sweeps): none may outlive
// the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every wait of the tests, so that a bug shows as a
// failure naming what never happened rather than as a hung test binary.
const testTimeout = 10 * time.Second
