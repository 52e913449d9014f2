package reply

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestRetryAfterSeconds(t *testing.T) {
	tests := []struct {
		d      time.Duration
		jitter float64
		want   int
	}{
		{0, 0, 1},
		{0, 0.99, 1},
		{-time.Minute, 0.5, 1},
		{time.Nanosecond, 0, 1},
		{999 * time.Millisecond, 0, 1},
		{time.Second, 0, 1},
		{1001 * time.Millisecond, 0, 2},
		{2 * time.Second, 0, 2},
		{2 * time.Second, 0.5, 3},   // 2.5 rounds up
		{2 * time.Second, 0.999, 3}, // 2.999 rounds up
		{2 * time.Second, 1, 3},     // 1.5x at most
		{10 * time.Second, 0.9999, 15},
		{10 * time.Second, 1, 15},
		{time.Hour, 0, 3600},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%g", tt.d, tt.jitter), func(t *testing.T) {
			if got := RetryAfterSeconds(tt.d, tt.jitter); got != tt.want {
				t.Errorf("RetryAfterSeconds(%s, %g): got %d, want %d", tt.d, tt.jitter, got, tt.want)
			}
		})
	}
	t.Run("bounds", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for range 10000 {
			d := time.Duration(r.Int64N(int64(time.Minute)))
			j := r.Float64()
			got := RetryAfterSeconds(d, j)
			lo := max(1, int(math.Ceil(d.Seconds())))
			hi := max(1, int(math.Ceil(d.Seconds()*1.5)))
			if got < lo || got > hi {
				t.Fatalf("RetryAfterSeconds(%s, %g): got %d, want between %d and %d", d, j, got, lo, hi)
			}
		}
	})
}
