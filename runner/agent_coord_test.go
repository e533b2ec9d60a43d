package runner

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/runner/gitlab"
	"github.com/airlock-ci/airlock/runner/job"
)

// fakeEnv is an agent environment without Docker: a fake GitLab with one
// runner and a state directory, for JobRunners that do not run containers.
func fakeEnv(t *testing.T) *agentEnv {
	t.Helper()
	gl := fakegitlab.New(t)
	gl.SetTraceUpdateInterval(1)
	e := &agentEnv{gl: gl, token: "glrt-" + agentRandomHex(10), stateDir: t.TempDir()}
	gl.AddRunner(e.token)
	return e
}

// sleepyRunner "runs" a job by writing a line and waiting d.
type sleepyRunner struct {
	d time.Duration

	mu  sync.Mutex
	ids []string
}

func (r *sleepyRunner) Run(ctx context.Context, j *job.Job, o RunOptions) (*Result, error) {
	r.mu.Lock()
	r.ids = append(r.ids, j.ID)
	r.mu.Unlock()
	fmt.Fprintf(o.Out, "working on %s\n", j.ID)
	select {
	case <-time.After(r.d):
	case <-ctx.Done():
		return &Result{State: Canceled, Err: context.Cause(ctx)}, nil
	}
	fmt.Fprintf(o.Out, "done with %s\n", j.ID)
	return &Result{State: Success, Duration: r.d}, nil
}

// A job that runs longer than the report timeout is still reported: the
// report's context is made when reporting starts (it used to be made when
// the job was accepted, so a job longer than 10 minutes was never
// reported). The bound is short here so that the test runs fast.
func TestAgentReportsJobLongerThanReportTimeout(t *testing.T) {
	e := fakeEnv(t)
	id := e.gl.Enqueue(gitlabSpec([]string{"true"}, nil))
	cfg := e.config(1)
	cfg.ReportTimeout = 300 * time.Millisecond
	r := &sleepyRunner{d: 4 * cfg.ReportTimeout}
	_, stop := startAgent(t, cfg, r)
	defer stop()
	st := waitJob(t, e.gl, id, time.Minute)
	if st.Status != "success" {
		t.Errorf("job longer than report_timeout ended %s/%q, want success\ntrace:\n%s", st.Status, st.FailureReason, e.gl.Trace(id))
	}
	if trace := e.gl.Trace(id); !bytes.Contains(trace, []byte("done with ")) || !bytes.Contains(trace, []byte("Job succeeded")) {
		t.Errorf("trace lacks the job's end:\n%s", trace)
	}
}

// Two [[runners]] on two GitLab instances that hand out the same numeric
// job id both run, at the same time, with distinct job ids (runtime
// directories, audit trails, network names are keyed by them).
func TestAgentRunsSameJobIDFromTwoInstances(t *testing.T) {
	e := newAgentEnv(t)
	other := fakegitlab.New(t)
	other.SetTraceUpdateInterval(1)
	otherToken := "glrt-" + agentRandomHex(10)
	other.AddRunner(otherToken)
	script := []string{"sleep 2", "echo ran $CI_JOB_ID"}
	id1 := e.gl.Enqueue(gitlabSpec(script, nil))
	id2 := other.Enqueue(gitlabSpec(script, nil))
	if id1 != id2 {
		t.Fatalf("the fakes handed out ids %d and %d; the test needs the same id", id1, id2)
	}
	cfg := e.config(2)
	cfg.Runners = append(cfg.Runners, gitlab.RunnerConfig{Name: "other", URL: other.URL, Token: otherToken})
	cfg.HTTPClient = nil // both fakes are plain HTTP on loopback
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()
	for _, gl := range []*fakegitlab.Server{e.gl, other} {
		st := waitJob(t, gl, id1, 2*time.Minute)
		if st.Status != "success" {
			t.Errorf("job %d of %s ended %s/%q, want success\ntrace:\n%s", id1, gl.URL, st.Status, st.FailureReason, gl.Trace(id1))
		}
		if !bytes.Contains(gl.Trace(id1), []byte(fmt.Sprintf("ran %d\n", id1))) {
			t.Errorf("trace of job %d of %s:\n%s", id1, gl.URL, gl.Trace(id1))
		}
	}
	if e.rec.max() != 2 {
		t.Errorf("%d jobs ran at once, want both", e.rec.max())
	}
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	if len(e.rec.out) != 2 {
		t.Errorf("the runner saw job ids %v, want two distinct ones", keys(e.rec.out))
	}
	for jid := range e.rec.out {
		if want1, want2 := gitlab.JobID(e.gl.URL, id1), gitlab.JobID(other.URL, id1); jid != want1 && jid != want2 {
			t.Errorf("job id %q, want %q or %q", jid, want1, want2)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A 201 whose body is not a job (and names none to fail) is backed off,
// not retried in a tight loop.
func TestAgentBacksOffUndecodableJob(t *testing.T) {
	e := fakeEnv(t)
	const bad = 4
	e.gl.InjectFault(fakegitlab.Fault{Method: "POST", Path: "/api/v4/jobs/request", Status: 201, Count: bad})
	id := e.gl.Enqueue(gitlabSpec([]string{"true"}, nil))
	cfg := e.config(1)
	cfg.BackoffMin, cfg.BackoffMax = 200*time.Millisecond, 400*time.Millisecond
	_, stop := startAgent(t, cfg, &sleepyRunner{})
	defer stop()
	if st := waitJob(t, e.gl, id, time.Minute); st.Status != "success" {
		t.Errorf("job after the undecodable answers ended %s, want success", st.Status)
	}
	reqs := e.gl.RequestsTo("POST", "/api/v4/jobs/request")
	if len(reqs) < bad+1 {
		t.Fatalf("%d job requests, want at least %d", len(reqs), bad+1)
	}
	for i := 1; i <= bad; i++ {
		if gap := reqs[i].Time.Sub(reqs[i-1].Time); gap < cfg.BackoffMin {
			t.Errorf("request %d came %s after an undecodable 201, want at least %s (back-off)", i, gap, cfg.BackoffMin)
		}
	}
}

// barrierCoordinator has no jobs; its Acquire returns once n calls are in
// flight at the same time.
type barrierCoordinator struct {
	n int

	mu      sync.Mutex
	inside  int
	reached chan struct{}
}

func (c *barrierCoordinator) Name() string            { return "fake:barrier" }
func (c *barrierCoordinator) Limit() int              { return 0 }
func (c *barrierCoordinator) RequestConcurrency() int { return c.n }
func (c *barrierCoordinator) Resume([]byte) (Lease, error) {
	return nil, fmt.Errorf("nothing to resume")
}

func (c *barrierCoordinator) Acquire(ctx context.Context) (Lease, error) {
	c.mu.Lock()
	if c.inside++; c.inside == c.n {
		close(c.reached)
	}
	c.mu.Unlock()
	select {
	case <-c.reached:
	case <-ctx.Done():
	}
	return nil, nil
}

// request_concurrency is applied: that many job requests are in flight at
// once (each holding a slot).
func TestAgentRequestConcurrency(t *testing.T) {
	c := &barrierCoordinator{n: 2, reached: make(chan struct{})}
	a, err := NewAgent(AgentConfig{Coordinators: []Coordinator{c}, Concurrent: 2, StateDir: t.TempDir(),
		CheckInterval: 10 * time.Millisecond}, &sleepyRunner{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-c.reached:
	case <-time.After(time.Minute):
		t.Fatalf("never %d job requests in flight at once", c.n)
	}
}
