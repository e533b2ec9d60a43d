package runner

import (
	"context"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// A refill waits for the jobs that just claimed to get going: until no
// claim came for refillQuiet, at most refillMaxDefer, and not past the
// pool's closing.
func TestPoolRefillWaitsForQuiet(t *testing.T) {
	p := &Pool{r: &Runner{}, want: map[string]int{"img": 1}, ready: map[string][]*warmSandbox{}, building: map[string]int{},
		kick: make(chan struct{}, 1)}
	ctx := context.Background()

	start := time.Now()
	if err := p.waitQuiet(ctx); err != nil || time.Since(start) >= refillQuiet {
		t.Errorf("with no claim yet: waitQuiet = %v after %s, want nil at once", err, time.Since(start))
	}

	// Any job's claim counts, of a pooled image or not.
	if w := p.claim(ctx, &job.Job{ID: "j1", Image: "other"}); w != nil || p.lastClaim.Load() == 0 {
		t.Fatalf("claim of an unpooled image: %v, last claim %d; want nil and the claim noted", w, p.lastClaim.Load())
	}
	start = time.Now()
	if err := p.waitQuiet(ctx); err != nil || time.Since(start) < refillQuiet-10*time.Millisecond {
		t.Errorf("right after a claim: waitQuiet = %v after %s, want nil after about %s", err, time.Since(start), refillQuiet)
	}

	// Claims that keep coming defer a refill by refillMaxDefer, not for ever.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				p.claim(ctx, &job.Job{ID: "j", Image: "img"})
			}
		}
	}()
	done := make(chan time.Duration, 1)
	p.claim(ctx, &job.Job{ID: "j0", Image: "img"})
	start = time.Now()
	go func() { _ = p.waitQuiet(ctx); done <- time.Since(start) }()
	select {
	case took := <-done:
		if took < refillMaxDefer {
			t.Errorf("under a stream of claims waitQuiet returned after %s, want at least %s", took, refillMaxDefer)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("under a stream of claims waitQuiet never returned: refills starve")
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	p.lastClaim.Store(time.Now().UnixNano())
	if err := p.waitQuiet(cctx); err == nil {
		t.Error("waitQuiet on a closed pool's context = nil, want its error")
	}
}
