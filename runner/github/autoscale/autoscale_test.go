package autoscale

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/githubapp"
)

// fakeJIT stands in for runner/github's JIT runner: it decodes the JIT
// config's runner name and, like a runner whose broker session delivered a
// job, takes whatever job the fake GitHub assigns to that name.
type fakeJIT struct {
	app     *fakegithub.App
	running atomic.Int64
	most    atomic.Int64
	started chan int64
}

func (f *fakeJIT) NewJIT(encoded []byte) (job.Coordinator, error) {
	files := map[string]string{}
	raw, err := base64.StdEncoding.DecodeString(string(encoded))
	if err == nil {
		err = json.Unmarshal(raw, &files)
	}
	if err != nil {
		return nil, fmt.Errorf("decoding JIT config: %w", err)
	}
	rf, _ := base64.StdEncoding.DecodeString(files[".runner"])
	var settings struct{ AgentName string }
	if err := json.Unmarshal(rf, &settings); err != nil || settings.AgentName == "" {
		return nil, errors.New("JIT config has no runner name")
	}
	return &fakeCoord{f: f, name: settings.AgentName}, nil
}

func (f *fakeJIT) Resume(record []byte) (job.Lease, error) {
	id, err := strconv.ParseInt(string(record), 10, 64)
	if err != nil {
		return nil, err
	}
	return &fakeLease{f: f, job: id}, nil
}

type fakeCoord struct {
	f    *fakeJIT
	name string
	got  bool
}

func (c *fakeCoord) Name() string                     { return "jit:" + c.name }
func (c *fakeCoord) Limit() int                       { return 1 }
func (c *fakeCoord) Resume([]byte) (job.Lease, error) { return nil, errors.New("not used") }
func (c *fakeCoord) Acquire(ctx context.Context) (job.Lease, error) {
	if c.got {
		return nil, errors.New("a JIT runner takes one job")
	}
	select {
	case <-ctx.Done():
		return nil, nil
	case <-time.After(20 * time.Millisecond):
	}
	j := c.f.app.Assign(c.name)
	if j == nil {
		return nil, nil
	}
	c.got = true
	n := c.f.running.Add(1)
	for {
		m := c.f.most.Load()
		if n <= m || c.f.most.CompareAndSwap(m, n) {
			break
		}
	}
	if c.f.started != nil {
		c.f.started <- j.ID
	}
	return &fakeLease{f: c.f, job: j.ID}, nil
}

type fakeLease struct {
	f   *fakeJIT
	job int64
}

func (l *fakeLease) Job() (*job.Job, error) {
	return &job.Job{ID: fmt.Sprintf("gh-%d", l.job), Source: job.SourceGitHub}, nil
}
func (l *fakeLease) Record() []byte                             { return []byte(strconv.FormatInt(l.job, 10)) }
func (l *fakeLease) Start(context.Context, func(), func(error)) {}
func (l *fakeLease) Log() io.Writer                             { return io.Discard }
func (l *fakeLease) Mask() []string                             { return nil }
func (l *fakeLease) Workspace() func(context.Context, string, io.Writer) error {
	return nil
}
func (l *fakeLease) Finish(context.Context, job.Outcome, string) error {
	l.f.app.Complete(l.job)
	l.f.running.Add(-1)
	return nil
}

type env struct {
	app    *fakegithub.App
	jit    *fakeJIT
	events *eventLog
	cfg    Config
	secret []byte
}

type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (l *eventLog) add(e Event) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }
func (l *eventLog) count(t EventType) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.evs {
		if e.Type == t {
			n++
		}
	}
	return n
}

func newEnv(t *testing.T, scope string) *env {
	t.Helper()
	app := fakegithub.New(t)
	sec := secrets.Secret{Name: "runner-app", Value: app.KeyPEM, Params: map[string]string{
		githubapp.ParamAppID: strconv.FormatInt(app.AppID, 10), githubapp.ParamInstallationID: "100", githubapp.ParamAPIURL: app.URL}}
	be := githubapp.New(nil)
	e := &env{app: app, jit: &fakeJIT{app: app}, events: &eventLog{}, secret: []byte("webhook-secret-value")}
	s, _, err := ParseScope("https://github.example/" + scope)
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = Config{
		Name: "acme", Scope: s, API: app.URL,
		Auth: &CachedToken{Mint: func(ctx context.Context) (string, time.Time, error) {
			return be.InstallationToken(ctx, sec, nil)
		}},
		Labels: []string{"airlock"}, MaxRunners: 2, WebhookSecret: e.secret,
		PollInterval: time.Hour, IdleTimeout: 2 * time.Second, ReconcileInterval: time.Hour,
		Host: "host1", StateDir: t.TempDir(), Factory: e.jit, Events: e.events.add,
	}
	return e
}

func (e *env) start(t *testing.T) (*Autoscaler, *httptest.Server) {
	t.Helper()
	a, err := New(e.cfg)
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv
}

// agent runs leases like runner.Agent does: Acquire while a slot is free,
// each job "runs" for hold and is finished.
func agent(ctx context.Context, t *testing.T, a *Autoscaler, hold time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	slots := make(chan struct{}, a.Limit())
	wg.Go(func() {
		for ctx.Err() == nil {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			l, err := a.Acquire(ctx)
			if err != nil || l == nil {
				<-slots
				if err != nil {
					t.Logf("Acquire() error = %v", err)
				}
				continue
			}
			wg.Go(func() {
				defer func() { <-slots }()
				time.Sleep(hold)
				if err := l.Finish(context.Background(), job.Outcome{State: job.Success}, ""); err != nil {
					t.Errorf("Finish() error = %v", err)
				}
			})
		}
	})
	return &wg
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBurstOfMixedLabelsServesOnlyMatchingWithinTheLimit(t *testing.T) {
	e := newEnv(t, "acme")
	a, srv := e.start(t)
	var ours []int64
	for i := range 6 {
		labels := []string{"self-hosted", "airlock"}
		if i%3 == 2 {
			labels = []string{"self-hosted", "gpu"}
		} else {
			ours = append(ours, int64(500+i))
		}
		e.app.AddRun(fakegithub.WorkflowRun{ID: int64(90 + i), Repo: "acme/app", Event: "push",
			Jobs: []*fakegithub.WorkflowJob{{ID: int64(500 + i), Name: "build", Labels: labels}}})
	}
	for i := range 6 {
		body := e.app.WorkflowJobPayload("queued", int64(500+i))
		if code := fakegithub.Deliver(t, srv.URL, e.secret, "workflow_job", fmt.Sprintf("d-%d", i), body); code != http.StatusNoContent {
			t.Fatalf("delivery %d answered %d, want 204", i, code)
		}
	}
	if got := a.Queued(); got != len(ours) {
		t.Fatalf("Queued() = %d after the burst, want %d (only jobs whose labels this host serves)", got, len(ours))
	}
	ctx, cancel := context.WithCancel(context.Background())
	wg := agent(ctx, t, a, 150*time.Millisecond)
	waitUntil(t, "every matching job completed", 20*time.Second, func() bool {
		done := 0
		for _, id := range ours {
			if e.app.JobStatus(id) == "completed" {
				done++
			}
		}
		return done == len(ours)
	})
	cancel()
	wg.Wait()
	for i := range 6 {
		if i%3 == 2 {
			if s := e.app.JobStatus(int64(500 + i)); s != "queued" {
				t.Errorf("gpu job %d is %q, want it left queued", 500+i, s)
			}
		}
	}
	if m := e.jit.most.Load(); m > int64(e.cfg.MaxRunners) || m < 1 {
		t.Errorf("at most %d jobs ran at once, want 1..%d", m, e.cfg.MaxRunners)
	}
	if n := e.app.JITMade(); n != len(ours) {
		t.Errorf("generate-jitconfig made %d runners, want %d (one per matching job, none stuck)", n, len(ours))
	}
	if left := e.app.Runners(); len(left) != 0 {
		t.Errorf("runners left registered: %+v", left)
	}
	if regs, _ := a.journal.list(); len(regs) != 0 {
		t.Errorf("journal keeps %d registrations after every job ended", len(regs))
	}
}

func TestLostWebhookIsRecoveredByPolling(t *testing.T) {
	e := newEnv(t, "acme/app")
	e.cfg.PollInterval = 100 * time.Millisecond
	a, _ := e.start(t)
	e.app.AddRun(fakegithub.WorkflowRun{ID: 7, Repo: "acme/app", Event: "push",
		Jobs: []*fakegithub.WorkflowJob{{ID: 71, Name: "test", Labels: []string{"self-hosted", "airlock"}}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	wg := agent(ctx, t, a, 10*time.Millisecond)
	waitUntil(t, "the polled job completed", 15*time.Second, func() bool { return e.app.JobStatus(71) == "completed" })
	cancel()
	wg.Wait()
	if e.events.count(EventJobQueued) != 1 {
		t.Errorf("job_queued events = %d, want 1 (the poll found the job once)", e.events.count(EventJobQueued))
	}
}

func TestForgedDuplicateAndOtherDeliveries(t *testing.T) {
	e := newEnv(t, "acme")
	a, srv := e.start(t)
	e.app.AddRun(fakegithub.WorkflowRun{ID: 8, Repo: "acme/app", Event: "push",
		Jobs: []*fakegithub.WorkflowJob{{ID: 81, Labels: []string{"airlock"}}}})
	body := e.app.WorkflowJobPayload("queued", 81)
	tests := []struct {
		name     string
		secret   []byte
		event    string
		delivery string
		body     []byte
		want     int
	}{
		{"forged signature", []byte("not-the-secret"), "workflow_job", "f-1", body, http.StatusUnauthorized},
		{"no signature", nil, "workflow_job", "f-2", body, http.StatusUnauthorized},
		{"genuine", e.secret, "workflow_job", "g-1", body, http.StatusNoContent},
		{"duplicate", e.secret, "workflow_job", "g-1", body, http.StatusOK},
		{"ping", e.secret, "ping", "p-1", []byte(`{"zen":"Keep it logically awesome."}`), http.StatusNoContent},
		{"unreadable", e.secret, "workflow_job", "u-1", []byte(`{"action":`), http.StatusBadRequest},
		{"too large", e.secret, "workflow_job", "l-1", make([]byte, maxWebhookBody+1), http.StatusRequestEntityTooLarge},
	}
	for _, tc := range tests {
		if got := fakegithub.Deliver(t, srv.URL, tc.secret, tc.event, tc.delivery, tc.body); got != tc.want {
			t.Errorf("%s delivery answered %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := a.Queued(); got != 1 {
		t.Errorf("Queued() = %d, want 1 (only the genuine delivery counts, once)", got)
	}
	if n := e.events.count(EventDeliveryRefused); n != 4 {
		t.Errorf("delivery_refused events = %d, want 4 (forged, unsigned, unreadable, too large)", n)
	}
	if n := e.events.count(EventDeliveryDuplicate); n != 1 {
		t.Errorf("delivery_duplicate events = %d, want 1", n)
	}
	// A job that started elsewhere leaves the demand.
	if got := fakegithub.Deliver(t, srv.URL, e.secret, "workflow_job", "g-2", e.app.WorkflowJobPayload("in_progress", 81)); got != http.StatusNoContent {
		t.Errorf("in_progress delivery answered %d", got)
	}
	if got := a.Queued(); got != 0 {
		t.Errorf("Queued() = %d after in_progress, want 0", got)
	}
}

func TestRunnerThatGetsNoJobIsDeleted(t *testing.T) {
	e := newEnv(t, "acme")
	e.cfg.IdleTimeout = 300 * time.Millisecond
	a, srv := e.start(t)
	e.app.AddRun(fakegithub.WorkflowRun{ID: 9, Repo: "acme/app", Event: "push",
		Jobs: []*fakegithub.WorkflowJob{{ID: 91, Labels: []string{"airlock"}}}})
	fakegithub.Deliver(t, srv.URL, e.secret, "workflow_job", "d-9", e.app.WorkflowJobPayload("queued", 91))
	// Another runner takes the job before ours comes online.
	e.app.AddRunner("org:acme", "other-pool-1", "online", false, "airlock")
	if j := e.app.Assign("other-pool-1"); j == nil || j.ID != 91 {
		t.Fatalf("the other runner did not take job 91: %+v", j)
	}
	l, err := a.Acquire(context.Background())
	if l != nil || err != nil {
		t.Fatalf("Acquire() = %v, %v; want no lease (the runner got no job)", l, err)
	}
	if n := e.events.count(EventRunnerStuck); n != 1 {
		t.Errorf("runner_stuck events = %d, want 1", n)
	}
	for _, rn := range e.app.Runners() {
		if rn.JIT {
			t.Errorf("JIT runner %s still registered after its idle timeout", rn.Name)
		}
	}
	if regs, _ := a.journal.list(); len(regs) != 0 {
		t.Errorf("journal keeps %+v", regs)
	}
	if got := a.Queued(); got != 1 {
		t.Errorf("Queued() = %d, want 1: the job is offered again until GitHub says it started", got)
	}
}

func TestReconcileAfterARestart(t *testing.T) {
	e := newEnv(t, "acme")
	jr, err := openJournal(e.cfg.StateDir, e.cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	idle := e.app.AddRunner("org:acme", "airlock-host1-0000aaaa", "online", false)
	unknown := e.app.AddRunner("org:acme", "airlock-host1-0000bbbb", "online", false)
	offline := e.app.AddRunner("org:acme", "airlock-host1-0000cccc", "offline", false)
	fresh := e.app.AddRunner("org:acme", "airlock-host1-0000dddd", "online", false)
	otherHost := e.app.AddRunner("org:acme", "airlock-host2-0000eeee", "offline", false)
	person := e.app.AddRunner("org:acme", "build-01", "offline", false)
	for _, r := range []registration{
		{Name: idle.Name, ID: idle.ID, Created: old},
		{Name: offline.Name, Created: time.Now()}, // crashed before generate-jitconfig answered
		{Name: fresh.Name, ID: fresh.ID, Created: time.Now()},
		{Name: "airlock-host1-0000ffff", ID: 1, Created: old}, // GitHub no longer has it
	} {
		if err := jr.put(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(jr.dir, "garbage.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, _ := e.start(t)
	a.reconcile(context.Background())
	left := map[string]bool{}
	for _, rn := range e.app.Runners() {
		left[rn.Name] = true
	}
	for name, want := range map[string]bool{idle.Name: false, unknown.Name: false, offline.Name: false,
		fresh.Name: true, otherHost.Name: true, person.Name: true} {
		if left[name] != want {
			t.Errorf("after reconcile runner %s registered = %t, want %t", name, left[name], want)
		}
	}
	regs, err := jr.list()
	if err == nil {
		t.Errorf("journal.list() with a garbage file: no error")
	}
	if len(regs) != 1 || regs[0].Name != fresh.Name {
		t.Errorf("journal after reconcile = %+v, want only %s", regs, fresh.Name)
	}
}

func TestTrustPolicyBeforeProvisioning(t *testing.T) {
	tests := []struct {
		name       string
		event      string
		head       string
		allowForks bool
		repos      []string
		wantQueued bool
	}{
		{"push", "push", "", false, nil, true},
		{"pull request from the same repository", "pull_request", "acme/app", false, nil, true},
		{"pull request from a fork", "pull_request", "mallory/app", false, nil, false},
		{"pull_request_target from a fork", "pull_request_target", "mallory/app", false, nil, false},
		{"fork allowed", "pull_request", "mallory/app", true, nil, true},
		{"repository allowed", "push", "", false, []string{"acme/ap*"}, true},
		{"repository not allowed", "push", "", false, []string{"acme/other"}, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "acme")
			e.cfg.AllowForks, e.cfg.Repositories = tc.allowForks, tc.repos
			a, srv := e.start(t)
			id := int64(600 + i)
			e.app.AddRun(fakegithub.WorkflowRun{ID: id, Repo: "acme/app", Event: tc.event, HeadRepo: tc.head,
				Jobs: []*fakegithub.WorkflowJob{{ID: id * 10, Labels: []string{"self-hosted", "airlock"}}}})
			fakegithub.Deliver(t, srv.URL, e.secret, "workflow_job", "t", e.app.WorkflowJobPayload("queued", id*10))
			if got := a.Queued() == 1; got != tc.wantQueued {
				t.Errorf("job taken into demand = %t, want %t", got, tc.wantQueued)
			}
			if !tc.wantQueued && e.events.count(EventJobRefused) != 1 {
				t.Errorf("job_refused events = %d, want 1", e.events.count(EventJobRefused))
			}
			if n := e.app.JITMade(); n != 0 {
				t.Errorf("a runner was made before the job was acquired: %d", n)
			}
		})
	}
}

func TestProvisioningFailureReleasesTheJob(t *testing.T) {
	e := newEnv(t, "acme")
	a, srv := e.start(t)
	e.app.AddRun(fakegithub.WorkflowRun{ID: 11, Repo: "acme/app", Event: "push", Jobs: []*fakegithub.WorkflowJob{{ID: 111, Labels: []string{"airlock"}}}})
	fakegithub.Deliver(t, srv.URL, e.secret, "workflow_job", "d", e.app.WorkflowJobPayload("queued", 111))
	e.app.FailJIT(1)
	if l, err := a.Acquire(context.Background()); l != nil || err == nil {
		t.Fatalf("Acquire() with generate-jitconfig failing = %v, %v; want an error", l, err)
	}
	if regs, _ := a.journal.list(); len(regs) != 0 {
		t.Errorf("a failed registration stays journaled: %+v", regs)
	}
	l, err := a.Acquire(context.Background())
	if err != nil || l == nil {
		t.Fatalf("second Acquire() = %v, %v; want the job", l, err)
	}
	var rec leaseRecord
	if err := json.Unmarshal(l.Record(), &rec); err != nil || rec.Runner == "" || rec.ID == 0 {
		t.Errorf("lease record %s does not name the registration", l.Record())
	}
	// A crashed run's record rebuilds the lease; Finish ends the runner.
	resumed, err := a.Resume(l.Record())
	if err != nil {
		t.Fatalf("Resume() error = %v", err)
	}
	if err := resumed.Finish(context.Background(), job.Outcome{State: job.Failed}, ""); err != nil {
		t.Fatal(err)
	}
	if left := e.app.Runners(); len(left) != 0 {
		t.Errorf("runners left after the resumed job finished: %+v", left)
	}
}

func TestMatchesAndScope(t *testing.T) {
	for _, tc := range []struct {
		want []string
		ok   bool
	}{
		{[]string{"self-hosted", "airlock"}, true},
		{[]string{"Self-Hosted", "Linux", "X64", "AIRLOCK"}, true},
		{[]string{"airlock"}, true},
		{[]string{"self-hosted"}, true},
		{[]string{"self-hosted", "gpu"}, false},
		{[]string{"ubuntu-latest"}, false},
		{nil, false},
	} {
		if got := matches([]string{"airlock"}, tc.want); got != tc.ok {
			t.Errorf("matches([airlock], %q) = %t, want %t", tc.want, got, tc.ok)
		}
	}
	for _, tc := range []struct {
		url, scope, api string
		bad             bool
	}{
		{"https://github.com/acme", "acme", "https://api.github.com", false},
		{"https://github.com/acme/app/", "acme/app", "https://api.github.com", false},
		{"https://ghe.example/acme", "acme", "https://ghe.example/api/v3", false},
		{"https://github.com/", "", "", true},
		{"https://github.com/a/b/c", "", "", true},
		{"ftp://github.com/acme", "", "", true},
	} {
		s, api, err := ParseScope(tc.url)
		if (err != nil) != tc.bad || (!tc.bad && (s.String() != tc.scope || api != tc.api)) {
			t.Errorf("ParseScope(%q) = %v, %q, %v; want %q, %q, error %t", tc.url, s, api, err, tc.scope, tc.api, tc.bad)
		}
	}
}
