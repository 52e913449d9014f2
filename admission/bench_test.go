package admission

import (
	"context"
	"testing"
	"time"
)

func benchLimits() Limits {
	var l Limits
	l.Budget = 1000
	l.Lane[Login] = LaneLimits{Reserved: 10, Max: 100, Queue: 100, QueueTimeout: time.Second}
	l.Lane[Core] = LaneLimits{Reserved: 500, Max: 1000, Queue: 100, QueueTimeout: time.Second}
	l.Lane[Export] = LaneLimits{Max: 10, Queue: 10, QueueTimeout: time.Second}
	return l
}

// BenchmarkAcquireRelease measures the uncontended fast path: a slot is
// free, nobody queues.
func BenchmarkAcquireRelease(b *testing.B) {
	c, err := New(benchLimits())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p, err := c.Acquire(ctx, Request{Lane: Core})
		if err != nil {
			b.Fatal(err)
		}
		p.Release()
	}
}

// BenchmarkAcquireReleaseParallel measures the fast path with every core
// admitting and releasing at once.
func BenchmarkAcquireReleaseParallel(b *testing.B) {
	c, err := New(benchLimits())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := c.Acquire(ctx, Request{Lane: Core})
			if err != nil {
				b.Error(err)
				return
			}
			p.Release()
		}
	})
}

// BenchmarkAcquireReleaseContended keeps the budget small so requests
// queue and hand slots to each other through the slow path.
func BenchmarkAcquireReleaseContended(b *testing.B) {
	var l Limits
	l.Budget = 2
	l.Lane[Core] = LaneLimits{Reserved: 2, Max: 2, Queue: 1000, QueueTimeout: time.Minute}
	c, err := New(l)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := c.Acquire(ctx, Request{Lane: Core})
			if err != nil {
				b.Error(err)
				return
			}
			p.Release()
		}
	})
}
