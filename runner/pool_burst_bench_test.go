package runner

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

// warmBurst is how many jobs BenchmarkWarmBurst starts at once.
const warmBurst = 16

// BenchmarkWarmBurst starts 16 jobs at once on a fully sandboxed runner
// whose pool holds 16 warm sandboxes of their image, and reports, p50 and
// p95, the network work left on each job's path (its policy registered
// with the gateway: the veth, addresses and firewall were made with the
// sandbox, before the job) and the time from the job handed to the runner
// to its step's first output byte. Rounds repeat until b.N jobs ran (at
// least two rounds). Once per executor.
func BenchmarkWarmBurst(b *testing.B) { benchEachExecutor(b, benchWarmBurst) }

func benchWarmBurst(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTestImage(b)
	ctx := context.Background()
	timing, log := newTimingLogger()
	r := openBenchRunner(b, log)
	p, err := r.StartPool(ctx, PoolConfig{Sizes: map[string]int{testenv.TestImage: warmBurst}})
	if err != nil {
		b.Fatal(err)
	}
	rounds := max(2, (b.N+warmBurst-1)/warmBurst)
	var firstBytes []time.Duration
	b.ResetTimer()
	for round := range rounds {
		b.StopTimer()
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		err := p.WaitReady(wctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		// The pool refills in the background: let the last refill settle.
		time.Sleep(500 * time.Millisecond)
		b.StartTimer()
		hits := p.Stats().Hits
		firstBytes = append(firstBytes, runBurst(b, r, fmt.Sprintf("burst-%d", round))...)
		if got := p.Stats().Hits - hits; got != warmBurst {
			b.Fatalf("round %d: %d of %d jobs claimed a warm sandbox", round, got, warmBurst)
		}
	}
	b.StopTimer()
	regs := timing.took("warm network registered")
	if len(regs) != rounds*warmBurst {
		b.Fatalf("%d warm registrations logged, want %d", len(regs), rounds*warmBurst)
	}
	b.ReportMetric(isoPercentileMS(regs, 50), "net-on-path-p50-ms")
	b.ReportMetric(isoPercentileMS(regs, 95), "net-on-path-p95-ms")
	b.ReportMetric(isoPercentileMS(firstBytes, 50), "first-byte-p50-ms")
	b.ReportMetric(isoPercentileMS(firstBytes, 95), "first-byte-p95-ms")
}

// BenchmarkColdBurstNetworks starts 16 cold jobs at once (an image no
// pool keeps), in interleaved rounds: their namespace plumbed and
// firewalled on their path (made there too with containerd; by the
// engine with Docker), or claimed from a pool of 16 made ahead ([pool]
// networks; held by holders with Docker), only the gateway registration
// left on the path. It reports the network work on each job's path,
// p50 / p95, both ways (goal at 16 at once: ≤ 10 / 20 ms), and the first
// output byte; once per executor.
func BenchmarkColdBurstNetworks(b *testing.B) {
	benchEachExecutor(b, func(b *testing.B) {
		testenv.RequireRoot(b)
		testenv.RequireTestImage(b)
		ctx := context.Background()
		timing, log := newTimingLogger()
		r := openBenchRunner(b, log)
		rounds := max(2, (b.N+warmBurst-1)/warmBurst)
		first := map[bool][]time.Duration{}
		burst := func(round int, pooled bool) {
			first[pooled] = append(first[pooled], runBurst(b, r, fmt.Sprintf("cold-%d-%t", round, pooled))...)
		}
		// One unmeasured round: the image is imported and unpacked.
		burst(-1, false)
		inline0 := len(timing.took("job network attached"))
		delete(first, false)
		b.ResetTimer()
		for round := range rounds {
			b.StopTimer()
			time.Sleep(500 * time.Millisecond) // the last round's teardowns settle
			b.StartTimer()
			burst(round, false)

			b.StopTimer()
			p, err := r.StartPool(ctx, PoolConfig{Networks: warmBurst})
			if err != nil {
				b.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			err = p.WaitReady(wctx)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			b.StartTimer()
			burst(round, true)
			b.StopTimer()
			if st := p.Stats(); st.NetHits != warmBurst {
				b.Fatalf("round %d: %d of %d jobs claimed a pooled network", round, st.NetHits, warmBurst)
			}
			if err := p.Close(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.StopTimer()
		inline := timing.took("job network attached")[inline0:]
		pooled := timing.took("warm network registered")
		if len(inline) != rounds*warmBurst || len(pooled) != rounds*warmBurst {
			b.Fatalf("%d inline and %d pooled networks logged, want %d each", len(inline), len(pooled), rounds*warmBurst)
		}
		b.ReportMetric(isoPercentileMS(inline, 50), "net-inline-p50-ms")
		b.ReportMetric(isoPercentileMS(inline, 95), "net-inline-p95-ms")
		b.ReportMetric(isoPercentileMS(pooled, 50), "net-pooled-p50-ms")
		b.ReportMetric(isoPercentileMS(pooled, 95), "net-pooled-p95-ms")
		b.ReportMetric(isoPercentileMS(first[false], 50), "first-byte-inline-p50-ms")
		b.ReportMetric(isoPercentileMS(first[true], 50), "first-byte-pooled-p50-ms")
	})
}

// runBurst runs warmBurst one-step jobs of the test image at once (ids
// prefix-N) and returns the time each took from being handed to the
// runner to its step's first output byte.
func runBurst(b *testing.B, r *Runner, prefix string) []time.Duration {
	const marker = "airlock-bench-output"
	var (
		mu  sync.Mutex
		out []time.Duration
		wg  sync.WaitGroup
	)
	start := make(chan struct{})
	for i := range warmBurst {
		wg.Go(func() {
			fb := &firstByte{marker: []byte(marker + "\n")}
			j := &job.Job{ID: fmt.Sprintf("%s-%d", prefix, i), Source: job.SourceLocal, Repo: isoRepo,
				Image: testenv.TestImage, Timeout: time.Minute,
				Steps: []job.Step{{Name: "echo", Script: []string{"echo " + marker}, When: job.OnSuccess}}}
			<-start
			t0 := time.Now()
			res, err := r.Run(context.Background(), j, RunOptions{Out: fb})
			if err != nil || res.State != Success {
				b.Errorf("Run(%s): %v, %+v", j.ID, err, res)
				return
			}
			mu.Lock()
			out = append(out, fb.when().Sub(t0))
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return out
}
