package gitlab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/runner/job"
)

func newTestCoordinator(t *testing.T, fake *fakegitlab.Server, mod func(*CoordinatorConfig)) *Coordinator {
	t.Helper()
	cfg := CoordinatorConfig{
		Runner:        RunnerConfig{Name: "test", URL: fake.URL, Token: runnerToken},
		SystemID:      "s_0123456789ab",
		HTTPClient:    fake.Client(),
		TraceInterval: time.Hour, // sent by Flush and Finish only
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestJobIDsAreUniquePerInstance(t *testing.T) {
	a, b := JobID("https://gitlab.one.test", 42), JobID("https://gitlab.two.test", 42)
	if a == b {
		t.Errorf("JobID of the same id on two instances = %q for both", a)
	}
	j := job.Job{ID: a, Source: job.SourceGitLab, Image: "x", Steps: []job.Step{{Name: "script", Script: []string{"true"}, When: job.OnSuccess}}}
	if err := j.Validate(); err != nil {
		t.Errorf("job id %q is not valid: %v", a, err)
	}
}

func TestLeaseJobCarriesInstance(t *testing.T) {
	fake := newRunnerFake(t)
	c := newTestCoordinator(t, fake, nil)
	id := fake.Enqueue(fakegitlab.JobSpec{Image: "img", Script: []string{"true"}})
	l, err := c.Acquire(testCtx(t))
	if err != nil || l == nil {
		t.Fatalf("Acquire() = %v, %v; want a lease", l, err)
	}
	j, err := l.Job()
	if err != nil {
		t.Fatal(err)
	}
	if j.ID != JobID(fake.URL, id) || j.CoordinatorID != fmt.Sprint(id) || j.Instance != c.Client().URL() {
		t.Errorf("job id %q, coordinator id %q, instance %q; want %q, %d, %q", j.ID, j.CoordinatorID, j.Instance, JobID(fake.URL, id), id, c.Client().URL())
	}
	if err := l.Finish(testCtx(t), job.Outcome{State: job.Success}, ""); err != nil {
		t.Errorf("Finish() = %v", err)
	}
}

// After a crash, the report continues the trace GitLab holds from the
// journaled offset instead of rewriting it from 0.
func TestResumeContinuesTrace(t *testing.T) {
	fake := newRunnerFake(t)
	c := newTestCoordinator(t, fake, nil)
	id := fake.Enqueue(fakegitlab.JobSpec{Image: "img", Script: []string{"true"}})
	l, err := c.Acquire(testCtx(t))
	if err != nil || l == nil {
		t.Fatalf("Acquire() = %v, %v", l, err)
	}
	var mu sync.Mutex
	var journaled []byte
	l.(job.JournalUpdater).SetJournal(func(rec []byte) error {
		mu.Lock()
		defer mu.Unlock()
		journaled = rec
		return nil
	})
	l.Start(testCtx(t), func() {}, func(error) {})
	before := "line 1 of the job\nline 2 of the job\n"
	fmt.Fprint(l.Log(), before)
	if err := l.(*Lease).tw.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	rec := journaled
	mu.Unlock()
	var lr leaseRecord
	if err := json.Unmarshal(rec, &lr); err != nil || lr.Trace.Size != int64(len(before)) {
		t.Fatalf("journaled record %s (%v): want trace size %d", rec, err, len(before))
	}
	// The process dies here. The next start resumes the record.
	c2 := newTestCoordinator(t, fake, nil)
	l2, err := c2.Resume(rec)
	if err != nil {
		t.Fatal(err)
	}
	crash := errors.New("the runner stopped unexpectedly")
	if err := l2.Finish(testCtx(t), job.Outcome{State: job.Failed, Reason: job.RunnerSystemFailure, Aborted: true, Err: crash}, ""); err != nil {
		t.Fatalf("Finish() of the resumed lease = %v", err)
	}
	trace := fake.Trace(id)
	if !bytes.HasPrefix(trace, []byte(before)) || !bytes.Contains(trace, []byte("ERROR: Job failed (system failure): the runner stopped unexpectedly")) {
		t.Errorf("trace after the crash report:\n%s\nwant the log before the crash, then the crash message", trace)
	}
	st := fake.Job(id)
	if st.Status != "failed" || st.FailureReason != "runner_system_failure" {
		t.Errorf("job ended %s/%q, want failed/runner_system_failure", st.Status, st.FailureReason)
	}
	for _, r := range fake.RequestsTo("PATCH", fmt.Sprintf("/api/v4/jobs/%d/trace", id))[1:] {
		if strings.HasPrefix(r.Header.Get("Content-Range"), "0-") {
			t.Errorf("the crash report rewrote the trace from offset 0 (Content-Range %s)", r.Header.Get("Content-Range"))
		}
	}
}

func TestAcquireUndecodable(t *testing.T) {
	fake := newRunnerFake(t)
	c := newTestCoordinator(t, fake, nil)
	// A 201 that names no job: an error (backed off by the agent), never a
	// lease.
	fake.InjectFault(fakegitlab.Fault{Method: "POST", Path: "/api/v4/jobs/request", Status: 201})
	if l, err := c.Acquire(testCtx(t)); err == nil || l != nil {
		t.Errorf("Acquire() of an undecodable 201 = %v, %v; want an error", l, err)
	}
	// One that names its id and token: a lease whose Job fails, and whose
	// Finish fails the job in GitLab.
	id := fake.Enqueue(fakegitlab.JobSpec{Payload: func(id int64, token string) []byte {
		return []byte(fmt.Sprintf(`{"id": %d, "token": %q, "steps": "not a list"}`, id, token))
	}})
	l, err := c.Acquire(testCtx(t))
	if err != nil || l == nil {
		t.Fatalf("Acquire() = %v, %v; want a lease", l, err)
	}
	_, jerr := l.Job()
	if jerr == nil {
		t.Fatal("Job() of a malformed payload succeeded")
	}
	if err := l.Finish(testCtx(t), job.Outcome{State: job.Failed, Reason: job.ConfigurationError, Err: jerr}, ""); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	st := fake.Job(id)
	if st.Status != "failed" || st.FailureReason != "runner_system_failure" || !bytes.Contains(fake.Trace(id), []byte("ERROR: Job failed (system failure)")) {
		t.Errorf("malformed job ended %s/%q, trace:\n%s", st.Status, st.FailureReason, fake.Trace(id))
	}
}

func TestCoordinatorReportsExecutor(t *testing.T) {
	for _, tc := range []struct{ entry, served, want string }{
		{"", "", "docker"},
		{"containerd", "", "containerd"},
		{"containerd", "docker", "docker"},
	} {
		fake := newRunnerFake(t)
		c := newTestCoordinator(t, fake, func(cfg *CoordinatorConfig) {
			cfg.Runner.Executor = tc.entry
			cfg.Executor = tc.served
		})
		if _, err := c.Acquire(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		reqs := jobRequests(t, fake)
		var info struct {
			Executor string `json:"executor"`
		}
		if err := json.Unmarshal(reqs[len(reqs)-1].Info, &info); err != nil || info.Executor != tc.want {
			t.Errorf("entry %q, served %q: GitLab told executor %q (%v), want %q", tc.entry, tc.served, info.Executor, err, tc.want)
		}
	}
}

func TestFinalStateOf(t *testing.T) {
	tests := []struct {
		o    job.Outcome
		want FinalState
	}{
		{job.Outcome{State: job.Success}, FinalState{State: StateSuccess}},
		{job.Outcome{State: job.Failed, Reason: job.ScriptFailure, ExitCode: 3}, FinalState{State: StateFailed, FailureReason: ReasonScriptFailure, ExitCode: 3}},
		{job.Outcome{State: job.Failed, Reason: job.Unauthorized}, FinalState{State: StateFailed, FailureReason: "unmet_prerequisites"}},
		{job.Outcome{State: job.Failed}, FinalState{State: StateFailed, FailureReason: ReasonUnknownFailure}},
		{job.Outcome{State: job.Canceled}, FinalState{State: StateFailed, FailureReason: ReasonUnknownFailure}},
		{job.Outcome{State: job.Canceled, Aborted: true}, FinalState{State: StateFailed, FailureReason: ReasonRunnerSystemFailure}},
	}
	for _, tc := range tests {
		if got := FinalStateOf(tc.o); got != tc.want {
			t.Errorf("FinalStateOf(%+v) = %+v, want %+v", tc.o, got, tc.want)
		}
	}
}

// A journaled trace progress GitLab's copy does not match (412 on the
// final update) still gets the crashed job reported: its trace is then
// rewritten rather than the job never reported.
func TestResumeWithStaleProgressStillReports(t *testing.T) {
	fake := newRunnerFake(t)
	c := newTestCoordinator(t, fake, nil)
	id := fake.Enqueue(fakegitlab.JobSpec{Image: "img", Script: []string{"true"}})
	l, err := c.Acquire(testCtx(t))
	if err != nil || l == nil {
		t.Fatalf("Acquire() = %v, %v", l, err)
	}
	fmt.Fprint(l.Log(), "some log\n")
	if err := l.(*Lease).tw.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	rec := leaseRecord{URL: c.Client().URL(), JobID: id, Token: fake.Job(id).Token, Trace: TraceProgress{Size: 9, CRC: 12345}}
	b, _ := json.Marshal(rec)
	l2, err := newTestCoordinator(t, fake, nil).Resume(b)
	if err != nil {
		t.Fatal(err)
	}
	o := job.Outcome{State: job.Failed, Reason: job.RunnerSystemFailure, Aborted: true, Err: errors.New("the runner stopped unexpectedly")}
	if err := l2.Finish(testCtx(t), o, ""); err != nil {
		t.Fatalf("Finish() = %v, want the job reported anyway", err)
	}
	if st := fake.Job(id); st.Status != "failed" || !bytes.Contains(fake.Trace(id), []byte("stopped unexpectedly")) {
		t.Errorf("job ended %s with trace:\n%s", st.Status, fake.Trace(id))
	}
}
