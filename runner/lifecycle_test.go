package runner

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/procs"
	"github.com/airlock-ci/airlock/internal/testenv/fakeexec"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

// The lifecycle's step, timeout, cancel and teardown logic on the fake
// executor: no Docker, milliseconds per test. The Docker tests
// (runner_test.go, isolation_test.go) keep the engine's properties.

type lcEnv struct {
	r   *Runner
	ex  *fakeexec.Executor
	rt  string
	out *lockedWriter
}

type lockedWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func newFakeRunner(t *testing.T) *lcEnv {
	t.Helper()
	ex := fakeexec.New()
	rt := t.TempDir()
	r, err := New(Config{RunnerID: "fake", RuntimeDir: rt, Grace: 20 * time.Millisecond}, ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	env := &lcEnv{r: r, ex: ex, rt: rt, out: &lockedWriter{}}
	// Teardown on every path: every container destroyed, no Exec running,
	// no runtime directory left.
	t.Cleanup(func() {
		for _, c := range ex.Containers() {
			if !c.Destroyed() {
				t.Errorf("container of job %s not destroyed", c.Spec().JobID)
			}
			if n := c.Running(); n != 0 {
				t.Errorf("%d execs of job %s still running after Run returned", n, c.Spec().JobID)
			}
		}
		if ents, _ := os.ReadDir(filepath.Join(rt, "jobs")); len(ents) > 0 {
			t.Errorf("runtime directories left: %v", ents)
		}
	})
	return env
}

func fakeJob(steps ...job.Step) *job.Job {
	for i := range steps {
		if steps[i].When == "" {
			steps[i].When = job.OnSuccess
		}
	}
	return &job.Job{ID: "j1", Source: job.SourceLocal, Repo: "group/app", Image: "fake:ok", Steps: steps, Timeout: time.Minute}
}

func step(name string, when job.When, script ...string) job.Step {
	return job.Step{Name: name, When: when, Script: script}
}

func (e *lcEnv) run(t *testing.T, ctx context.Context, j *job.Job, o RunOptions) *Result {
	t.Helper()
	o.Out = e.out
	res, err := e.r.Run(ctx, j, o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

// ran returns, for each step, whether it ran ("ran") or was skipped.
func ran(res *Result) string {
	var parts []string
	for _, s := range res.Steps {
		if s.Skipped {
			parts = append(parts, s.Name+":skipped")
		} else {
			parts = append(parts, s.Name+":"+strconv.Itoa(s.ExitCode))
		}
	}
	return strings.Join(parts, " ")
}

func TestLifecycleSteps(t *testing.T) {
	tests := []struct {
		name       string
		steps      []job.Step
		wantState  State
		wantReason FailureReason
		wantCode   int
		wantSteps  string
	}{
		{
			name:      "success",
			steps:     []job.Step{step("build", "", "echo building", "true"), step("test", "", "echo testing"), step("after", job.Always, "echo after")},
			wantState: Success, wantSteps: "build:0 test:0 after:0",
		},
		{
			name: "script failure skips on_success, runs on_failure and always",
			steps: []job.Step{step("build", "", "echo one", "exit 3", "echo never"), step("test", "", "true"),
				step("report", job.OnFailure, "true"), step("after", job.Always, "true")},
			wantState: Failed, wantReason: ScriptFailure, wantCode: 3,
			wantSteps: "build:3 test:skipped report:0 after:0",
		},
		{
			name:      "on_failure skipped on success",
			steps:     []job.Step{step("build", "", "true"), step("report", job.OnFailure, "true")},
			wantState: Success, wantSteps: "build:0 report:skipped",
		},
		{
			name:      "allow_failure goes on",
			steps:     []job.Step{{Name: "lint", Script: []string{"exit 1"}, AllowFailure: true}, step("build", "", "true")},
			wantState: Success, wantSteps: "lint:1 build:0",
		},
		{
			name:      "a failing always step does not fail the job",
			steps:     []job.Step{step("build", "", "true"), step("after", job.Always, "exit 9")},
			wantState: Success, wantSteps: "build:0 after:9",
		},
		{
			name:      "exec error is a runner failure",
			steps:     []job.Step{step("build", "", "exec-error the runtime broke"), step("test", "", "true"), step("after", job.Always, "true")},
			wantState: Failed, wantReason: RunnerSystemFailure, wantSteps: "build:-1 test:skipped after:0",
		},
		{
			name:      "unknown command exits 127",
			steps:     []job.Step{step("build", "", "no-such-tool --version")},
			wantState: Failed, wantReason: ScriptFailure, wantCode: 127, wantSteps: "build:127",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newFakeRunner(t)
			res := e.run(t, context.Background(), fakeJob(tc.steps...), RunOptions{})
			if res.State != tc.wantState || res.Reason != tc.wantReason || res.ExitCode != tc.wantCode {
				t.Errorf("result = %s/%s exit %d (%v), want %s/%s exit %d", res.State, res.Reason, res.ExitCode, res.Err, tc.wantState, tc.wantReason, tc.wantCode)
			}
			if got := ran(res); got != tc.wantSteps {
				t.Errorf("steps = %s, want %s", got, tc.wantSteps)
			}
		})
	}
}

// The job's variables reach every step at exec time, and the script's
// commands are echoed.
func TestLifecycleVariablesAndOutput(t *testing.T) {
	e := newFakeRunner(t)
	j := fakeJob(step("build", "", "require GREETING=hello", "echo $GREETING from $CI_PROJECT_PATH", "warn careful"))
	j.Variables = []job.Variable{{Key: "GREETING", Value: "hello"}}
	res := e.run(t, context.Background(), j, RunOptions{})
	if res.State != Success {
		t.Fatalf("result = %s (%v), output:\n%s", res.State, res.Err, e.out)
	}
	out := e.out.String()
	for _, want := range []string{"$ echo $GREETING from $CI_PROJECT_PATH\n", "hello from group/app\n", "careful\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	c := e.ex.Containers()[0]
	if spec := c.Spec(); spec.RunnerID != "fake" || spec.JobID != "j1" || spec.WorkDir != DefaultWorkDir {
		t.Errorf("spec = %+v", spec)
	}
	if x := c.Execs()[0]; x.Grace != 20*time.Millisecond || x.WorkDir != DefaultWorkDir {
		t.Errorf("exec grace %v, workdir %q; want the runner's", x.Grace, x.WorkDir)
	}
}

func TestLifecycleJobTimeout(t *testing.T) {
	e := newFakeRunner(t)
	j := fakeJob(step("build", "", "hang"), step("test", "", "true"), step("after", job.Always, "echo cleaning up"))
	j.Timeout = 30 * time.Millisecond
	res := e.run(t, context.Background(), j, RunOptions{})
	if res.State != Failed || res.Reason != JobTimeout || !errors.Is(res.Err, ErrTimeout) {
		t.Errorf("result = %s/%s (%v), want failed/job_execution_timeout", res.State, res.Reason, res.Err)
	}
	if got := ran(res); got != "build:-1 test:skipped after:0" {
		t.Errorf("steps = %s; want the always step to run after the timeout", got)
	}
}

// A step's own timeout fails the job as a timeout, not as a runner
// failure.
func TestLifecycleStepTimeout(t *testing.T) {
	e := newFakeRunner(t)
	j := fakeJob(job.Step{Name: "build", Script: []string{"hang"}, Timeout: 20 * time.Millisecond}, step("after", job.Always, "true"))
	res := e.run(t, context.Background(), j, RunOptions{})
	if res.State != Failed || res.Reason != JobTimeout || !errors.Is(res.Err, ErrTimeout) {
		t.Errorf("result = %s/%s (%v), want failed/job_execution_timeout", res.State, res.Reason, res.Err)
	}
	if got := ran(res); got != "build:-1 after:0" {
		t.Errorf("steps = %s", got)
	}
}

// An always step gets its own timeout: it is cut short, the job's state
// stands.
func TestLifecycleAlwaysStepTimeout(t *testing.T) {
	e := newFakeRunner(t)
	j := fakeJob(step("build", "", "true"), job.Step{Name: "after", When: job.Always, Script: []string{"hang"}, Timeout: 20 * time.Millisecond})
	res := e.run(t, context.Background(), j, RunOptions{})
	if res.State != Success {
		t.Errorf("result = %s/%s (%v), want success", res.State, res.Reason, res.Err)
	}
}

// Cancel stops the running step; always steps still run.
func TestLifecycleCancel(t *testing.T) {
	e := newFakeRunner(t)
	cancel := make(chan struct{})
	j := fakeJob(step("build", "", "trap-term", "hang"), step("test", "", "true"), step("after", job.Always, "echo after"))
	done := make(chan *Result, 1)
	go func() { done <- e.run(t, context.Background(), j, RunOptions{Cancel: cancel}) }()
	waitRunning(t, e.ex)
	close(cancel)
	res := <-done
	if res.State != Canceled || !errors.Is(res.Err, ErrCanceled) {
		t.Errorf("result = %s/%s (%v), want canceled", res.State, res.Reason, res.Err)
	}
	if got := ran(res); got != "build:-1 test:skipped after:0" {
		t.Errorf("steps = %s", got)
	}
	// The step ignoring SIGTERM got the runner's grace before it was killed.
	if got := e.ex.Containers()[0].Stopped(); len(got) != 1 || got[0] != "kill" {
		t.Errorf("the cut-short step ended by %v, want [kill] after the grace", got)
	}
}

// Abort (ctx) stops the job at once: no further step runs, not even
// always steps.
func TestLifecycleAbort(t *testing.T) {
	e := newFakeRunner(t)
	ctx, abort := context.WithCancelCause(context.Background())
	j := fakeJob(step("build", "", "hang"), step("after", job.Always, "echo after"))
	done := make(chan *Result, 1)
	go func() { done <- e.run(t, ctx, j, RunOptions{}) }()
	waitRunning(t, e.ex)
	abort(ErrAborted)
	res := <-done
	if res.State != Canceled {
		t.Errorf("result = %s/%s (%v), want canceled", res.State, res.Reason, res.Err)
	}
	if got := ran(res); got != "build:-1 after:skipped" {
		t.Errorf("steps = %s; want no step after an abort", got)
	}
}

// Create failures: nothing of the job ran, nothing is left, the reason
// says why.
func TestLifecycleCreateFails(t *testing.T) {
	for _, tc := range []struct {
		image  string
		reason FailureReason
	}{
		{"fake:missing", ImagePullFailure},
		{"fake:create-error", RunnerSystemFailure},
	} {
		t.Run(tc.image, func(t *testing.T) {
			e := newFakeRunner(t)
			j := fakeJob(step("build", "", "true"), step("after", job.Always, "true"))
			j.Image = tc.image
			res := e.run(t, context.Background(), j, RunOptions{})
			if res.State != Failed || res.Reason != tc.reason {
				t.Errorf("result = %s/%s (%v), want failed/%s", res.State, res.Reason, res.Err, tc.reason)
			}
			if len(res.Steps) != 0 || e.ex.Creates() != 1 || len(e.ex.Containers()) != 0 {
				t.Errorf("steps %v, creates %d, containers %d; want no step and no container", res.Steps, e.ex.Creates(), len(e.ex.Containers()))
			}
		})
	}
}

// A job refused by its own spec never reaches the executor.
func TestLifecycleInvalidJob(t *testing.T) {
	e := newFakeRunner(t)
	j := fakeJob(step("build", "", "true"))
	j.Image = ""
	res := e.run(t, context.Background(), j, RunOptions{})
	if res.State != Failed || res.Reason != ConfigurationError {
		t.Errorf("result = %s/%s, want failed/%s", res.State, res.Reason, ConfigurationError)
	}
	if e.ex.Creates() != 0 {
		t.Errorf("Create called %d times for an invalid job", e.ex.Creates())
	}
}

// A teardown failure is Run's error; the job's own result stands.
func TestLifecycleDestroyFails(t *testing.T) {
	e := newFakeRunner(t)
	j := fakeJob(step("build", "", "true"))
	j.Image = "fake:destroy-error"
	res, err := e.r.Run(context.Background(), j, RunOptions{Out: e.out})
	if err == nil || !strings.Contains(err.Error(), "removing container") {
		t.Errorf("Run error = %v, want the teardown failure", err)
	}
	if res.State != Success {
		t.Errorf("result = %s, want success (the steps passed)", res.State)
	}
	// The fake fails only the first Destroy: a retry removes it.
	c := e.ex.Containers()[0]
	if err := c.Destroy(context.Background()); err != nil || !c.Destroyed() {
		t.Errorf("second Destroy = %v", err)
	}
}

// Hooks see the job's lifecycle in order.
func TestLifecycleHooks(t *testing.T) {
	e := newFakeRunner(t)
	h := &recordingHook{}
	e.r.Hooks = append(e.r.Hooks, h)
	e.run(t, context.Background(), fakeJob(step("build", "", "true"), step("after", job.Always, "true")), RunOptions{})
	if got := strings.Join(h.events, ","); got != "job-started,step-started build,step-finished build 0,step-started after,step-finished after 0,job-finished success" {
		t.Errorf("hook events = %s", got)
	}
}

type recordingHook struct {
	mu     sync.Mutex
	events []string
}

func (h *recordingHook) add(s string) { h.mu.Lock(); h.events = append(h.events, s); h.mu.Unlock() }

func (h *recordingHook) JobStarted(*job.Job)              { h.add("job-started") }
func (h *recordingHook) StepStarted(_ *job.Job, s string) { h.add("step-started " + s) }
func (h *recordingHook) StepFinished(_ *job.Job, r StepResult) {
	h.add("step-finished " + r.Name + " " + strconv.Itoa(r.ExitCode))
}
func (h *recordingHook) JobFinished(_ *job.Job, r *Result) { h.add("job-finished " + string(r.State)) }

func waitRunning(t *testing.T, ex *fakeexec.Executor) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		for _, c := range ex.Containers() {
			if c.Running() > 0 {
				return
			}
		}
	}
	t.Fatal("no step started within 10s")
}

var _ executors.Reaper = (*fakeexec.Executor)(nil)

// shortBackend mints a credential shorter than the masking minimum and
// records revocations.
type shortBackend struct {
	mu      sync.Mutex
	revoked int
}

func (b *shortBackend) Mint(context.Context, secrets.MintRequest) (secrets.Credential, error) {
	return secrets.Credential{Value: []byte("tiny"), Handle: "h1"}, nil
}

func (b *shortBackend) Revoke(context.Context, secrets.RevokeRequest) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.revoked++
	return nil
}

// A minted credential the masker would refuse fails the job before any
// step runs, and is revoked; it is never handed to the job unmasked.
func TestLifecycleUnmaskableCredential(t *testing.T) {
	e := newFakeRunner(t)
	st, err := secrets.Open(t.TempDir(), secrets.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.PutSecret(secrets.Secret{Name: "tok", Backend: secrets.BackendVault, Value: []byte("a-long-enough-vault-token")}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddGrant(secrets.Grant{Secret: "tok", Repo: "group/app", Delivery: job.DeliverEnv, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	be := &shortBackend{}
	e.r.Broker, err = secrets.NewBroker(secrets.BrokerOptions{Store: st, Backends: map[string]secrets.Backend{secrets.BackendVault: be}})
	if err != nil {
		t.Fatal(err)
	}
	j := fakeJob(step("build", "", "echo $TOK"))
	j.Secrets = []job.SecretRequest{{Name: "tok", Var: "TOK"}}
	res := e.run(t, context.Background(), j, RunOptions{})
	if res.State != Failed || res.Err == nil || !strings.Contains(res.Err.Error(), "masked") {
		t.Errorf("result = %s/%s (%v), want a failure saying the credential cannot be masked", res.State, res.Reason, res.Err)
	}
	if len(res.Steps) != 0 || e.ex.Creates() != 0 {
		t.Errorf("steps %v, creates %d: want nothing of the job run", res.Steps, e.ex.Creates())
	}
	if strings.Contains(e.out.String(), "tiny") {
		t.Errorf("the credential appears in the output:\n%s", e.out)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.revoked != 1 {
		t.Errorf("revocations = %d, want 1", be.revoked)
	}
}

// The job sees its runtime files at /run/airlock but not the owner record
// (the runner's host pid and start time).
func TestLifecycleOwnerNotInJobView(t *testing.T) {
	e := newFakeRunner(t)
	j := fakeJob(step("build", "", "ls /run/airlock"))
	j.Variables = []job.Variable{{Key: "CONF", Value: "x=1", File: true}}
	res := e.run(t, context.Background(), j, RunOptions{})
	if res.State != Success {
		t.Fatalf("result = %s (%v):\n%s", res.State, res.Err, e.out)
	}
	out := e.out.String()
	if !strings.Contains(out, "var-0-CONF") {
		t.Errorf("the job's file variable is not in /run/airlock:\n%s", out)
	}
	if strings.Contains(out, ownerFile) {
		t.Errorf("the owner file is in the job's view:\n%s", out)
	}
}

// Partial runtime directories a crash left are swept: an owner in the name
// that is dead, or (older versions) no owner at all after a while; a live
// creator's stays.
func TestSweepPartialRuntimeDirs(t *testing.T) {
	rt := t.TempDir()
	r, err := New(Config{RunnerID: "rtest02", RuntimeDir: rt}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(rt, "jobs")
	gone := procs.Owner{PID: 1 << 22, Start: 1}
	deadNamed := filepath.Join(base, partialPrefix+gone.String()+"-123")
	liveNamed := filepath.Join(base, partialPrefix+r.owner.String()+"-456")
	legacyOld := filepath.Join(base, partialPrefix+"789")
	legacyNew := filepath.Join(base, partialPrefix+"790")
	for _, d := range []string{deadNamed, liveNamed, legacyOld, legacyNew} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(legacyOld, old, old); err != nil {
		t.Fatal(err)
	}
	if err := r.sweepRuntime(func(string) *Recovered { return &Recovered{} }); err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string]bool{deadNamed: false, liveNamed: true, legacyOld: false, legacyNew: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", filepath.Base(d), err == nil, want)
		}
	}
}
