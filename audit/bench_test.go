package audit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkSpoolAppend measures durable appends (fsync on, group commit):
// one trail with one writer, one trail with 16 concurrent writers, and 16
// trails (jobs) with one writer each. Reports events/s.
func BenchmarkSpoolAppend(b *testing.B) {
	ev := NewEgress(KindHTTP, "api.allowed.test", 443, VerdictAllowed, "", 1234, 5*time.Millisecond)
	run := func(b *testing.B, trails, writersPerTrail int) {
		key := testKey(b)
		dir := b.TempDir()
		ts := make([]*Trail, trails)
		for i := range ts {
			t, err := Open(dir, "r1", fmt.Sprintf("job-%d", i), key)
			if err != nil {
				b.Fatal(err)
			}
			ts[i] = t
			b.Cleanup(func() { t.Close() })
		}
		ctx := context.Background()
		writers := trails * writersPerTrail
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for w := range writers {
			n := b.N / writers
			if w < b.N%writers {
				n++
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := ts[w%trails]
				for range n {
					if _, err := t.Log(ctx, ev); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	}
	b.Run("jobs=1/batch=256", func(b *testing.B) {
		key := testKey(b)
		t, err := Open(b.TempDir(), "r1", "job-batch", key)
		if err != nil {
			b.Fatal(err)
		}
		defer t.Close()
		batch := make([]Event, 256)
		for i := range batch {
			batch[i] = ev
		}
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		for n := 0; n < b.N; n += len(batch) {
			if _, err := t.LogBatch(ctx, batch[:min(len(batch), b.N-n)]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})
	b.Run("jobs=1", func(b *testing.B) { run(b, 1, 1) })
	b.Run("jobs=1/writers=16", func(b *testing.B) { run(b, 1, 16) })
	b.Run("jobs=16", func(b *testing.B) { run(b, 16, 1) })
}

// BenchmarkLiveDelivery measures how long a record takes from Append to a
// live HTTP collector through the Shipper with its default poll (goal < 1 s).
func BenchmarkLiveDelivery(b *testing.B) {
	for _, kick := range []bool{false, true} {
		b.Run(fmt.Sprintf("kick=%v", kick), func(b *testing.B) {
			key := testKey(b)
			spool := b.TempDir()
			got := make(chan int64, 1024)
			srv := newBenchCollector(b, got)
			hs, err := NewHTTPSink(srv, "", "")
			if err != nil {
				b.Fatal(err)
			}
			sh := NewShipper(spool, []Sink{hs}, ShipperOptions{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); sh.Run(ctx) }()
			defer func() { cancel(); <-done }()
			var opts []Option
			if kick {
				opts = append(opts, WithDurable(sh.Kick))
			}
			tr, err := Open(spool, "r1", "live", key, opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			var total time.Duration
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				rec, err := tr.Log(ctx, NewStepStarted("s"))
				if err != nil {
					b.Fatal(err)
				}
				for seq := range got {
					if seq >= rec.Seq {
						break
					}
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/delivery")
		})
	}
}
