package runner

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// A refill waits for the jobs that just claimed to get going: until no
// claim came for refillQuiet, at most refillMaxDefer, and not past the
// pool's closing — while the CPUs are busy; a look that finds a core to
// spare ends the wait.
func TestPoolRefillWaitsForQuiet(t *testing.T) {
	var busy atomic.Bool
	busy.Store(true)
	fakeCPU(t, &busy)
	p := &Pool{r: &Runner{}, want: map[string]int{"img": 1}, ready: map[string][]*warmSandbox{}, building: map[string]int{},
		kick: make(chan struct{}, 1)}
	ctx := context.Background()

	start := time.Now()
	if err := p.waitQuiet(ctx); err != nil || time.Since(start) >= refillQuiet {
		t.Errorf("with no claim yet: waitQuiet = %v after %s, want nil at once", err, time.Since(start))
	}

	// Any job's claim counts, of a pooled image or not.
	if w := p.claim(ctx, &job.Job{ID: "j1", Image: "other"}, executors.PullIfNotPresent); w != nil || p.lastClaim.Load() == 0 {
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
				p.claim(ctx, &job.Job{ID: "j", Image: "img"}, executors.PullIfNotPresent)
			}
		}
	}()
	done := make(chan time.Duration, 1)
	p.claim(ctx, &job.Job{ID: "j0", Image: "img"}, executors.PullIfNotPresent)
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

	// The same stream, the CPUs mostly idle: one look.
	busy.Store(false)
	start = time.Now()
	go func() { _ = p.waitQuiet(ctx); done <- time.Since(start) }()
	select {
	case took := <-done:
		if took < roomEvery-10*time.Millisecond || took >= refillQuiet {
			t.Errorf("a stream of claims, the CPUs idle: waitQuiet returned after %s, want about %s", took, roomEvery)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a stream of claims, the CPUs idle: waitQuiet never returned")
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	p.lastClaim.Store(time.Now().UnixNano())
	if err := p.waitQuiet(cctx); err == nil {
		t.Error("waitQuiet on a closed pool's context = nil, want its error")
	}
}

// With recent = 1, the pool keeps the image most used by the last jobs
// (used twice at least; ties to the one used last) beside the listed
// ones, and never counts a job's image that holds a private value or
// needs the job's registry credentials.
func TestPoolKeepsTheMostUsedRecently(t *testing.T) {
	p := &Pool{r: &Runner{}, log: hclog.NewNullLogger(), listed: map[string]int{"listed": 2}, want: map[string]int{"listed": 2}, recent: 1, recentSize: 3,
		ready: map[string][]*warmSandbox{}, building: map[string]int{}, kick: make(chan struct{}, 1)}
	use := func(j *job.Job) {
		if j.ID == "" {
			j.ID = "j"
		}
		p.note(j)
	}
	wantKept := func(step string, want map[string]int) {
		t.Helper()
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.want) != len(want) {
			t.Fatalf("%s: kept %v, want %v", step, p.want, want)
		}
		for img, n := range want {
			if p.want[img] != n {
				t.Fatalf("%s: kept %v, want %v", step, p.want, want)
			}
		}
	}
	use(&job.Job{Image: "a"})
	wantKept("after one use", map[string]int{"listed": 2})
	use(&job.Job{Image: "b"})
	use(&job.Job{Image: "b"})
	wantKept("b used twice", map[string]int{"listed": 2, "b": 3})
	use(&job.Job{Image: "a"})
	wantKept("a used twice too, last", map[string]int{"listed": 2, "a": 3})
	use(&job.Job{Image: "b"})
	wantKept("b used three times", map[string]int{"listed": 2, "b": 3})

	// Never counted: an image holding a private value, one needing the
	// job's registry credentials, a job with services (it never claims).
	secret := job.Variable{Key: "TOKEN", Value: "s3cr3t-value", Masked: true}
	for range 5 {
		use(&job.Job{Image: "registry.example/s3cr3t-value:1", Variables: []job.Variable{secret}})
		use(&job.Job{Image: "registry.example/private:1", RegistryAuth: []job.RegistryAuth{{Registry: "registry.example", Username: "u", Password: "p"}}})
		use(&job.Job{Image: "svc", Services: []job.Service{{Image: "postgres"}}})
	}
	wantKept("after ineligible jobs", map[string]int{"listed": 2, "b": 3})
	// Credentials for another registry (GitLab's own, given to every
	// job) do not make an image the job's private one.
	gitlab := []job.RegistryAuth{{Registry: "gitlab.example:5050", Username: "gitlab-ci-token", Password: "p"}}
	for range 4 {
		use(&job.Job{Image: "d", RegistryAuth: gitlab})
	}
	wantKept("d used with another registry's credentials", map[string]int{"listed": 2, "d": 3})
	p.mu.Lock()
	for _, img := range p.history {
		if img != "a" && img != "b" && img != "d" {
			t.Errorf("history holds %q", img)
		}
	}
	p.mu.Unlock()

	// The window is bounded: old uses fall out of it.
	for range recentWindow {
		use(&job.Job{Image: "c"})
	}
	wantKept("after a window of c", map[string]int{"listed": 2, "c": 3})
	if len(p.history) != recentWindow {
		t.Errorf("history holds %d images, want %d", len(p.history), recentWindow)
	}
}
