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
	const marker = "airlock-bench-output"
	rounds := max(2, (b.N+warmBurst-1)/warmBurst)
	var firstBytes []time.Duration
	var mu sync.Mutex
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
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range warmBurst {
			wg.Go(func() {
				fb := &firstByte{marker: []byte(marker + "\n")}
				j := &job.Job{ID: fmt.Sprintf("burst-%d-%d", round, i), Source: job.SourceLocal, Repo: isoRepo,
					Image: testenv.TestImage, Timeout: time.Minute,
					Steps: []job.Step{{Name: "echo", Script: []string{"echo " + marker}, When: job.OnSuccess}}}
				<-start
				t0 := time.Now()
				res, err := r.Run(ctx, j, RunOptions{Out: fb})
				if err != nil || res.State != Success {
					b.Errorf("Run(%s): %v, %+v", j.ID, err, res)
					return
				}
				mu.Lock()
				firstBytes = append(firstBytes, fb.when().Sub(t0))
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
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
