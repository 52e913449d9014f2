package admission

import (
	"context"
	"runtime"
	"sync"
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

// BenchmarkQueuedFootprint measures what 10,000 requests waiting in a
// queue cost: each is a goroutine blocked in Acquire with its waiter. Run
// with -bench QueuedFootprint -benchtime 1x.
func BenchmarkQueuedFootprint(b *testing.B) {
	const n = 10_000
	for b.Loop() {
		var l Limits
		l.Budget = 1
		l.Lane[Core] = LaneLimits{Reserved: 1, Max: 1, Queue: n, QueueTimeout: time.Hour}
		c, err := New(l)
		if err != nil {
			b.Fatal(err)
		}
		hold, _ := c.Acquire(context.Background(), Request{Lane: Core})
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() { c.Acquire(ctx, Request{Lane: Core}) })
		}
		for c.Snapshot().Lanes[Core].Queued < n {
			runtime.Gosched()
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.Sys-before.Sys)/n, "sys-B/queued")
		b.ReportMetric(float64((after.StackInuse+after.HeapAlloc)-(before.StackInuse+before.HeapAlloc))/n, "B/queued")
		cancel()
		wg.Wait()
		hold.Release()
	}
}
