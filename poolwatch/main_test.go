package poolwatch

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: the
// Reader reads several consoles at once, and pgx watches contexts.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
