package session

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine outlives them: the
// Redis store's pools, the test helpers' process waiters and the
// concurrency tests' workers must all end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
