package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// fakeCoordinator is an in-process job source: the agent's contract with
// coordinators, without any protocol.
type fakeCoordinator struct {
	name string

	mu       sync.Mutex
	queue    []*fakeLease
	acquires int
	gone     bool // Acquire says the registration is gone
	panics   int  // Acquire panics this many times first
	resumed  []*fakeLease
}

func (c *fakeCoordinator) Name() string { return c.name }
func (c *fakeCoordinator) Limit() int   { return 0 }

func (c *fakeCoordinator) Acquire(ctx context.Context) (Lease, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.acquires++
	if c.panics > 0 {
		c.panics--
		panic("coordinator bug")
	}
	if c.gone {
		return nil, fmt.Errorf("registration deleted: %w", job.ErrCoordinatorGone)
	}
	if len(c.queue) == 0 {
		return nil, nil
	}
	l := c.queue[0]
	c.queue = c.queue[1:]
	return l, nil
}

func (c *fakeCoordinator) Resume(record []byte) (Lease, error) {
	l := &fakeLease{id: "resumed", record: record, finished: make(chan job.Outcome, 1)}
	c.mu.Lock()
	c.resumed = append(c.resumed, l)
	c.mu.Unlock()
	return l, nil
}

func (c *fakeCoordinator) calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.acquires
}

// fakeLease is one job of a fakeCoordinator.
type fakeLease struct {
	id       string
	jobErr   error
	record   []byte
	failOnce atomic.Bool // the first Finish fails (not ErrJobGone)

	log      lockedBuffer
	finished chan job.Outcome
	started  atomic.Bool
	trails   []string
}

func (l *fakeLease) Job() (*job.Job, error) {
	if l.jobErr != nil {
		return nil, l.jobErr
	}
	return &job.Job{ID: l.id, Source: job.SourceLocal, Image: "img",
		Steps: []job.Step{{Name: "script", Script: []string{"true"}, When: job.OnSuccess}}}, nil
}
func (l *fakeLease) Record() []byte                             { return l.record }
func (l *fakeLease) Start(context.Context, func(), func(error)) { l.started.Store(true) }
func (l *fakeLease) Log() io.Writer                             { return &l.log }
func (l *fakeLease) Mask() []string                             { return []string{"lease-secret-value"} }
func (l *fakeLease) Workspace() func(context.Context, string, io.Writer) error {
	return nil
}

func (l *fakeLease) Finish(_ context.Context, o job.Outcome, trail string) error {
	if l.failOnce.CompareAndSwap(true, false) {
		return errors.New("coordinator unreachable")
	}
	l.trails = append(l.trails, trail)
	l.finished <- o
	return nil
}

func newFakeLease(id string) *fakeLease {
	return &fakeLease{id: id, record: []byte(`{"lease":"` + id + `"}`), finished: make(chan job.Outcome, 1)}
}

func waitFinished(t *testing.T, l *fakeLease) job.Outcome {
	t.Helper()
	select {
	case o := <-l.finished:
		return o
	case <-time.After(time.Minute):
		t.Fatalf("lease %s was never finished", l.id)
	}
	return job.Outcome{}
}

func runFakeAgent(t *testing.T, stateDir string, jr JobRunner, coords ...Coordinator) (stop func()) {
	t.Helper()
	a, err := NewAgent(AgentConfig{Coordinators: coords, Concurrent: 2, StateDir: stateDir,
		CheckInterval: 5 * time.Millisecond, BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond}, jr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Agent.Run() = %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// echoRunner prints the lease's secret (the agent masks it) and succeeds.
type echoRunner struct{}

func (echoRunner) Run(_ context.Context, j *job.Job, o RunOptions) (*Result, error) {
	fmt.Fprintf(o.Out, "job %s says lease-secret-value\n", j.ID)
	return &Result{State: Success}, nil
}

func TestAgentServesAnyCoordinator(t *testing.T) {
	good, bad := newFakeLease("fake-1"), newFakeLease("fake-2")
	bad.jobErr = errors.New("payload makes no sense")
	c := &fakeCoordinator{name: "fake:one", queue: []*fakeLease{good, bad}, panics: 1}
	state := t.TempDir()
	stop := runFakeAgent(t, state, echoRunner{}, c)
	if o := waitFinished(t, good); o.State != job.Success || o.Summary != "Job succeeded" {
		t.Errorf("good lease finished %+v, want success", o)
	}
	if !good.started.Load() {
		t.Errorf("the good lease was never started")
	}
	if got := good.log.String(); got != "job fake-1 says [MASKED]\nJob succeeded\n" {
		t.Errorf("job log = %q, want the masked output and the summary", got)
	}
	o := waitFinished(t, bad)
	if o.State != job.Failed || o.Reason != job.ConfigurationError || o.Err == nil || bad.started.Load() {
		t.Errorf("refused lease finished %+v (started %v), want a configuration failure, never started", o, bad.started.Load())
	}
	stop()
	if recs, err := openAndList(t, state); err != nil || len(recs) != 0 {
		t.Errorf("journal after every report: %d records, %v; want none", len(recs), err)
	}
}

// A report that fails keeps the opaque record; the next start resumes it
// from the record and reports it as the runner's failure.
func TestAgentResumesUnreportedLease(t *testing.T) {
	l := newFakeLease("fake-3")
	l.failOnce.Store(true)
	c := &fakeCoordinator{name: "fake:one", queue: []*fakeLease{l}}
	state := t.TempDir()
	stop := runFakeAgent(t, state, echoRunner{}, c)
	deadline := time.Now().Add(time.Minute)
	for l.failOnce.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the lease was never reported")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	recs, err := openAndList(t, state)
	if err != nil || len(recs) != 1 || string(recs[0].Lease) != string(l.record) || recs[0].Coordinator != "fake:one" || recs[0].JobID != "fake-3" {
		t.Fatalf("journal after a failed report = %+v, %v; want the lease's record", recs, err)
	}

	c2 := &fakeCoordinator{name: "fake:one"}
	stop = runFakeAgent(t, state, echoRunner{}, c2)
	deadline = time.Now().Add(time.Minute)
	for {
		c2.mu.Lock()
		n := len(c2.resumed)
		c2.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the next start never resumed the record")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := c2.resumed[0]
	o := waitFinished(t, r)
	if string(r.record) != string(l.record) || o.State != job.Failed || o.Reason != job.RunnerSystemFailure || !o.Aborted {
		t.Errorf("resumed %q and finished %+v; want the record and a runner failure", r.record, o)
	}
	stop()
	if recs, err := openAndList(t, state); err != nil || len(recs) != 0 {
		t.Errorf("journal after the resumed report: %d records, %v; want none", len(recs), err)
	}
}

// A coordinator whose registration is gone is no longer asked; the
// others go on.
func TestAgentStopsServingGoneCoordinator(t *testing.T) {
	gone := &fakeCoordinator{name: "fake:gone", gone: true}
	live := &fakeCoordinator{name: "fake:live"}
	runFakeAgent(t, t.TempDir(), echoRunner{}, gone, live)
	deadline := time.Now().Add(time.Minute)
	for live.calls() < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("the live coordinator was asked %d times", live.calls())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := gone.calls(); n != 1 {
		t.Errorf("the gone coordinator was asked %d times, want once", n)
	}
}

func TestAgentRefusesDuplicateCoordinatorNames(t *testing.T) {
	_, err := NewAgent(AgentConfig{Coordinators: []Coordinator{&fakeCoordinator{name: "x"}, &fakeCoordinator{name: "x"}},
		StateDir: t.TempDir()}, echoRunner{})
	if err == nil {
		t.Error("NewAgent with two coordinators of one name succeeded")
	}
}

func openAndList(t *testing.T, state string) ([]agentJournalEntry, error) {
	t.Helper()
	j, err := openAgentJournal(state)
	if err != nil {
		t.Fatal(err)
	}
	return j.list()
}
