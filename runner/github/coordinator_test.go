package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/runner/job"
)

// testConvert is a minimal run-step conversion kept for the protocol
// tests (the workflow half converts for real): literal scripts and names,
// always() conditions.
func testConvert(raw []byte) (*Conversion, error) {
	j, err := testJob(raw)
	if err != nil {
		return nil, err
	}
	return &Conversion{Job: j}, nil
}

func testJob(raw []byte) (*job.Job, error) {
	var m struct {
		JobDisplayName string `json:"jobDisplayName"`
		Steps          []struct {
			DisplayName json.RawMessage `json:"displayNameToken"`
			Condition   string          `json:"condition"`
			Inputs      struct {
				Map []struct {
					Key   string          `json:"Key"`
					Value json.RawMessage `json:"Value"`
				} `json:"map"`
			} `json:"inputs"`
		} `json:"steps"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	j := &job.Job{Name: m.JobDisplayName, Image: "airlock-test:busybox"}
	for _, s := range m.Steps {
		var name, script string
		if err := json.Unmarshal(s.DisplayName, &name); err != nil {
			return nil, fmt.Errorf("step name is not a literal: %s", s.DisplayName)
		}
		for _, kv := range s.Inputs.Map {
			if kv.Key == "script" {
				if err := json.Unmarshal(kv.Value, &script); err != nil {
					return nil, fmt.Errorf("step %s: script is not a literal", name)
				}
			}
		}
		when := job.OnSuccess
		switch {
		case strings.Contains(s.Condition, "always()"):
			when = job.Always
		case strings.Contains(s.Condition, "failure()"):
			when = job.OnFailure
		}
		j.Steps = append(j.Steps, job.Step{Name: name, Script: []string{script}, When: when})
	}
	return j, nil
}

func newTestCoordinator(t *testing.T, reg *Registration) *Coordinator {
	t.Helper()
	c, err := New(Config{Name: "t", Registration: reg, Convert: testConvert,
		RenewInterval: 50 * time.Millisecond, FirstRenewWait: 10 * time.Millisecond, ErrorWait: 20 * time.Millisecond,
		Logger: hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Debug})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func jitCoordinator(t *testing.T, f *fakegithub.Runners, name string) (*Coordinator, int64) {
	t.Helper()
	enc, id := f.JITConfig(name, "airlock")
	reg, err := ParseJITConfig(enc)
	if err != nil {
		t.Fatal(err)
	}
	return newTestCoordinator(t, reg), id
}

// acquire calls Acquire as the agent does until a lease comes or an error.
func acquire(t *testing.T, c *Coordinator) (job.Lease, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		l, err := c.Acquire(ctx)
		if l != nil || err != nil {
			return l, err
		}
	}
	t.Fatal("no job within 30s")
	return nil, nil
}

// driven is a lease run by a tiny stand-in for the agent: the steps are
// written to the log (as the runner's step headers), not executed.
type driven struct {
	lease     job.Lease
	cancelled chan struct{}
	aborted   chan error
}

func start(t *testing.T, l job.Lease) *driven {
	t.Helper()
	d := &driven{lease: l, cancelled: make(chan struct{}), aborted: make(chan error, 1)}
	var once atomic.Bool
	l.Start(context.Background(), func() {
		if once.CompareAndSwap(false, true) {
			close(d.cancelled)
		}
	}, func(err error) { d.aborted <- err })
	return d
}

func (d *driven) step(name, output string) {
	fmt.Fprintf(d.lease.Log(), "\x1b[36;1m>>> step %s\x1b[0;m\n%s", name, output)
}

func (d *driven) finish(t *testing.T, o job.Outcome) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return d.lease.Finish(ctx, o, "")
}

func checkClean(t *testing.T, f *fakegithub.Runners) {
	t.Helper()
	if v := f.Violations(); len(v) > 0 {
		t.Errorf("protocol violations seen by the fake:\n%s", strings.Join(v, "\n"))
	}
	if e := f.InternalErrors(); len(e) > 0 {
		t.Errorf("fake internal errors: %v", e)
	}
}

func TestCoordinatorRunsJobEndToEnd(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 150 * time.Millisecond
	f.AcknowledgeJobs = true
	c, _ := jitCoordinator(t, f, "jit-e2e")

	// A few empty polls (204, 202 and 200 without a body) come first.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	for i := 0; i < 4; i++ {
		l, err := c.Acquire(ctx)
		if l != nil || err != nil {
			t.Fatalf("empty poll %d: Acquire = %v, %v; want nil, nil", i, l, err)
		}
	}
	cancel()

	fj := f.QueueJob(fakegithub.JobSpec{Name: "build", Labels: []string{"self-hosted", "airlock"},
		Secrets: map[string]string{"MY_SECRET": "s3cr3t-value"},
		Steps:   []fakegithub.Step{{Name: "Compile", Run: "make"}, {Name: "Test", Run: "make test"}, {Name: "Never", Run: "x", If: "failure()"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	j, err := l.Job()
	if err != nil {
		t.Fatal(err)
	}
	if j.Source != job.SourceGitHub || !strings.HasPrefix(j.ID, "github-t-") || len(j.Steps) != 3 {
		t.Fatalf("job = %+v", j)
	}
	if err := j.Validate(); err != nil {
		t.Fatalf("converted job invalid: %v", err)
	}
	if got := f.Job(fj.ID); got.Renewals < 1 || !got.FirstRenewBeforeLog {
		t.Fatalf("lease handed out before the first lock renewal (renewals %d, before log %v)", got.Renewals, got.FirstRenewBeforeLog)
	}
	mask := strings.Join(l.Mask(), "\n")
	for _, v := range []string{fj.Token, fj.GitHubToken, "s3cr3t-value"} {
		if !strings.Contains(mask, v) {
			t.Errorf("Mask() lacks a value the output must never show")
		}
	}
	d := start(t, l)
	fmt.Fprintln(l.Log(), "Preparing the job")
	d.step("Compile", "compiling\n")
	time.Sleep(200 * time.Millisecond) // a few renewal intervals
	d.step("Test", "ok 1\nok 2\n")
	o := job.Outcome{State: job.Success, Steps: []job.StepResult{{Name: "Compile"}, {Name: "Test"}, {Name: "Never", Skipped: true, ExitCode: -1}}}
	if err := d.finish(t, o); err != nil {
		t.Fatal(err)
	}
	got := f.Job(fj.ID)
	if got.State != "completed" || got.Conclusion != "succeeded" {
		t.Fatalf("job state %s conclusion %s, want completed succeeded", got.State, got.Conclusion)
	}
	if got.Renewals < 3 {
		t.Errorf("%d lock renewals, want the lock renewed while the job ran", got.Renewals)
	}
	ids := map[string]string{}
	for _, s := range fj.Spec.Steps {
		ids[s.Name] = s.ID
	}
	if log := got.StepLogs[ids["Compile"]]; !strings.Contains(log, "compiling") || strings.Contains(log, "ok 1") {
		t.Errorf("Compile step log = %q", log)
	}
	if log := got.StepLogs[ids["Test"]]; !strings.Contains(log, "ok 2") {
		t.Errorf("Test step log = %q", log)
	}
	live := map[string]bool{}
	for _, fl := range got.FeedLines {
		if fl.StepID == ids["Test"] {
			live[fl.Text] = true
		}
	}
	if !live["ok 1"] || !live["ok 2"] {
		t.Errorf("live console lines of the Test step: %v", got.FeedLines)
	}
	if !strings.Contains(got.JobLog, "Preparing the job") || !strings.Contains(got.JobLog, "ok 2") {
		t.Errorf("job log = %q", got.JobLog)
	}
	results, _ := got.Completion["stepResults"].([]any)
	want := map[string]string{"Compile": "succeeded", "Test": "succeeded", "Never": "skipped"}
	for _, r := range results {
		m := r.(map[string]any)
		if want[m["name"].(string)] != m["conclusion"] || ids[m["name"].(string)] != m["external_id"] {
			t.Errorf("step result %v, want conclusion %s under the message step id", m, want[m["name"].(string)])
		}
	}
	last := got.StepUpdates[len(got.StepUpdates)-1]
	for _, u := range last {
		if u.Status != 6 {
			t.Errorf("final step update %+v: status %d, want 6 (completed)", u, u.Status)
		}
	}
	if len(got.StepUpdates) < 3 {
		t.Errorf("%d step updates, want live in-progress updates before the final one", len(got.StepUpdates))
	}
	checkClean(t, f)
	// The ephemeral runner is done: the agent stops serving it.
	if _, err := c.Acquire(context.Background()); !errors.Is(err, job.ErrCoordinatorGone) {
		t.Errorf("Acquire after the JIT job = %v, want ErrCoordinatorGone", err)
	}
	if f.Sessions() != 0 {
		t.Errorf("%d sessions left open, want the session deleted", f.Sessions())
	}
	// Nothing the runner sent holds a credential.
	recv := f.Received()
	for name, v := range map[string]string{"job token": fj.Token, "GITHUB_TOKEN": fj.GitHubToken} {
		if strings.Contains(recv, v) {
			t.Errorf("the %s reached the fake in a request body", name)
		}
	}
	for _, tok := range f.OAuthTokens() {
		if strings.Contains(recv, tok) {
			t.Error("the runner's OAuth token reached the fake in a request body")
		}
	}
}

func TestCoordinatorCancellation(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, _ := jitCoordinator(t, f, "jit-cancel")
	fj := f.QueueJob(fakegithub.JobSpec{Name: "long", Steps: []fakegithub.Step{{Name: "Sleep", Run: "sleep 600"}, {Name: "Cleanup", Run: "echo bye", If: "always()"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Job(); err != nil {
		t.Fatal(err)
	}
	d := start(t, l)
	d.step("Sleep", "sleeping\n")
	f.Cancel(fj.ID)
	select {
	case <-d.cancelled:
	case <-time.After(20 * time.Second):
		t.Fatal("the lease did not pass GitHub's JobCancellation on")
	}
	d.step("Cleanup", "bye\n")
	o := job.Outcome{State: job.Canceled, Steps: []job.StepResult{{Name: "Sleep", ExitCode: -1, Err: context.Canceled}, {Name: "Cleanup"}}}
	if err := d.finish(t, o); err != nil {
		t.Fatal(err)
	}
	got := f.Job(fj.ID)
	if got.Conclusion != "canceled" {
		t.Errorf("conclusion %q, want canceled", got.Conclusion)
	}
	for _, r := range got.Completion["stepResults"].([]any) {
		m := r.(map[string]any)
		want := map[string]string{"Sleep": "canceled", "Cleanup": "succeeded"}[m["name"].(string)]
		if m["conclusion"] != want {
			t.Errorf("step %s conclusion %v, want %s", m["name"], m["conclusion"], want)
		}
	}
	checkClean(t, f)
}

func TestCoordinatorDeletedRegistrationStops(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, id := jitCoordinator(t, f, "jit-deleted")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if l, err := c.Acquire(ctx); l != nil || err != nil {
		t.Fatalf("first poll = %v, %v", l, err)
	}
	f.DeleteRunner(id)
	_, err := c.Acquire(ctx)
	if !errors.Is(err, job.ErrCoordinatorGone) {
		t.Fatalf("Acquire after deletion = %v, want ErrCoordinatorGone", err)
	}
	// A fresh coordinator for the deleted runner learns it at the OAuth
	// exchange (invalid_client), once, and never retries.
	f.RevokeOAuthTokens()
	before := strings.Count(f.Received(), "POST /oauth/token")
	for i := 0; i < 3; i++ {
		if _, err := c.Acquire(ctx); !errors.Is(err, job.ErrCoordinatorGone) {
			t.Fatalf("Acquire %d = %v, want ErrCoordinatorGone", i, err)
		}
	}
	if n := strings.Count(f.Received(), "POST /oauth/token") - before; n != 0 {
		t.Errorf("%d OAuth exchanges after the registration was known gone, want 0", n)
	}
	enc, id2 := f.JITConfig("jit-deleted-2")
	reg, _ := ParseJITConfig(enc)
	f.DeleteRunner(id2)
	c2 := newTestCoordinator(t, reg)
	if _, err := c2.Acquire(ctx); !errors.Is(err, job.ErrCoordinatorGone) || !strings.Contains(err.Error(), "invalid_client") {
		t.Errorf("Acquire of a deleted runner = %v, want ErrCoordinatorGone from invalid_client", err)
	}
}

func TestCoordinatorJITRefusesSecondJob(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, _ := jitCoordinator(t, f, "jit-once")
	first := f.QueueJob(fakegithub.JobSpec{Name: "one", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	second := f.QueueJob(fakegithub.JobSpec{Name: "two", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Job(); err != nil {
		t.Fatal(err)
	}
	d := start(t, l)
	d.step("A", "")
	// While busy the fake offers the second job; it must not be taken.
	if _, ok := f.WaitJob(second.ID, "assigned", 10*time.Second); !ok {
		t.Fatal("the fake never offered the second job")
	}
	time.Sleep(300 * time.Millisecond)
	if err := d.finish(t, job.Outcome{State: job.Success, Steps: []job.StepResult{{Name: "A"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(context.Background()); !errors.Is(err, ErrEphemeralDone) {
		t.Errorf("Acquire after the job = %v, want ErrEphemeralDone", err)
	}
	if got := f.Job(first.ID); got.Conclusion != "succeeded" {
		t.Errorf("first job conclusion %q", got.Conclusion)
	}
	got := f.Job(second.ID)
	if got.Acquisitions != 0 || got.State != "queued" {
		t.Errorf("second job: %d acquisitions, state %s; want never acquired and back in the queue", got.Acquisitions, got.State)
	}
	checkClean(t, f)
}

func TestCoordinatorSessionConflictAndTokenRefresh(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, _ := jitCoordinator(t, f, "jit-409")
	f.ConflictSessions(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Acquire(ctx); StatusOf(err) != 409 || errors.Is(err, job.ErrCoordinatorGone) {
		t.Fatalf("Acquire during a session conflict = %v, want a 409 to back off from", err)
	}
	if l, err := c.Acquire(ctx); l != nil || err != nil {
		t.Fatalf("Acquire after the conflict = %v, %v", l, err)
	}
	// A 401 (token expired on the server side) buys a new token once.
	f.RevokeOAuthTokens()
	if l, err := c.Acquire(ctx); l != nil || err != nil {
		t.Fatalf("Acquire after the token was revoked = %v, %v; want a transparent refresh", l, err)
	}
	if n := len(f.OAuthTokens()); n != 1 {
		t.Errorf("%d tokens after refresh, want 1", n)
	}
	checkClean(t, f)
}

func TestCoordinatorLockLostAbortsJob(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, _ := jitCoordinator(t, f, "jit-lock")
	fj := f.QueueJob(fakegithub.JobSpec{Name: "lock", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, l)
	// The job vanishes on GitHub's side: renewjob answers 404.
	f.ExpireJob(fj.ID)
	select {
	case err := <-d.aborted:
		if !errors.Is(err, job.ErrJobGone) {
			t.Errorf("abort cause %v, want ErrJobGone", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a job whose lock renewal answers 404 was not aborted")
	}
	if err := d.finish(t, job.Outcome{State: job.Failed, Aborted: true}); !errors.Is(err, job.ErrJobGone) {
		t.Errorf("Finish of a vanished job = %v, want ErrJobGone", err)
	}
}

func TestCoordinatorFirstRenewalGatesTheJob(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, _ := jitCoordinator(t, f, "jit-gate")
	f.FailRenewals(firstRenewTries)
	fj := f.QueueJob(fakegithub.JobSpec{Name: "gated", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 5; i++ {
		if l, err := c.Acquire(ctx); l != nil {
			t.Fatalf("a lease was handed out although no renewal succeeded (err %v)", err)
		}
		if f.Job(fj.ID).Acquisitions > 0 {
			break
		}
	}
	if got := f.Job(fj.ID); got.Acquisitions != 1 || got.Renewals != 0 {
		t.Errorf("job acquisitions %d renewals %d, want 1 and 0", got.Acquisitions, got.Renewals)
	}
}

func TestResumeReportsCrashedJob(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, _ := jitCoordinator(t, f, "jit-resume")
	fj := f.QueueJob(fakegithub.JobSpec{Name: "crash", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	rec := l.Record()
	// The agent "crashes": a new coordinator resumes the record.
	enc, _ := f.JITConfig("jit-resume-2")
	reg, _ := ParseJITConfig(enc)
	c2 := newTestCoordinator(t, reg)
	rl, err := c2.Resume(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rl.Job(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(rl.Log(), "the runner crashed while the job ran; its credentials were revoked")
	if err := rl.Finish(context.Background(), job.Outcome{State: job.Failed, Reason: job.RunnerSystemFailure, Aborted: true}, ""); err != nil {
		t.Fatal(err)
	}
	got := f.Job(fj.ID)
	if got.Conclusion != "failed" || !strings.Contains(got.JobLog, "runner crashed") {
		t.Errorf("resumed job: conclusion %q, log %q", got.Conclusion, got.JobLog)
	}
	_ = io.Discard
}

func TestCoordinatorPipelinesQueueWithBrokerMigration(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	enc, _ := f.JITConfig("jit-pipelines")
	reg, err := ParseJITConfig(enc)
	if err != nil {
		t.Fatal(err)
	}
	reg.UseV2Flow = false // a registration that still starts on the pipelines queue
	c := newTestCoordinator(t, reg)
	fj := f.QueueJob(fakegithub.JobSpec{Name: "migrated", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Job(); err != nil {
		t.Fatal(err)
	}
	d := start(t, l)
	d.step("A", "")
	if err := d.finish(t, job.Outcome{State: job.Success, Steps: []job.StepResult{{Name: "A"}}}); err != nil {
		t.Fatal(err)
	}
	recv := f.Received()
	if !strings.Contains(recv, "/pipelines/_apis/distributedtask/pools/1/messages") || !strings.Contains(recv, "GET /broker/message?") {
		t.Error("the job did not come through the pipelines queue and the broker it migrated to")
	}
	if got := f.Job(fj.ID); got.Conclusion != "succeeded" {
		t.Errorf("conclusion %q", got.Conclusion)
	}
	checkClean(t, f)
}

// The fake's job messages (both token encodings, context data) go through
// the workflow half's decoder and conversion.
func TestMessageConverterReadsTheFakesMessages(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	enc, _ := f.JITConfig("jit-conv")
	reg, _ := ParseJITConfig(enc)
	c, err := New(Config{Name: "conv", Registration: reg, Convert: MessageConverter("airlock-test:busybox", "conv", http.DefaultClient, nil), RenewInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	f.QueueJob(fakegithub.JobSpec{Name: "conv", Env: map[string]string{"GREETING": "hello ${{ github.repository }}"},
		Steps: []fakegithub.Step{{Name: "Say ${{ github.ref_name }}", Run: "echo $GREETING ${{ github.sha }}"}, {Name: "Last", Run: "true", If: "always()"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	j, err := l.Job()
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Validate(); err != nil {
		t.Fatalf("converted job invalid: %v", err)
	}
	if j.Instance != f.URL || j.Repo != "acme/app" || j.Ref != "main" || len(j.Steps) != 2 || !strings.HasPrefix(j.ID, "github-conv-") {
		t.Errorf("job = %+v", j)
	}
	d := start(t, l)
	if err := d.finish(t, job.Outcome{State: job.Success}); err != nil {
		t.Fatal(err)
	}
	checkClean(t, f)
}

// A job the conversion refuses is reported failed, with the reason in its
// log, and nothing of it runs.
func TestRefusedJobIsReportedWithItsReason(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	enc, _ := f.JITConfig("jit-refuse")
	reg, _ := ParseJITConfig(enc)
	c, err := New(Config{Name: "refuse", Registration: reg, Convert: MessageConverter("airlock-test:busybox", "refuse", nil, nil), RenewInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	fj := f.QueueJob(fakegithub.JobSpec{Name: "refused", Steps: []fakegithub.Step{{Name: "Bad action", Uses: "no such/thing"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	_, jerr := l.Job()
	if jerr == nil {
		t.Fatal("the conversion accepted a malformed uses:")
	}
	// What the agent does with a refused job.
	if err := l.Finish(context.Background(), job.Outcome{State: job.Failed, Reason: job.ConfigurationError, Err: jerr}, ""); err != nil {
		t.Fatal(err)
	}
	got := f.Job(fj.ID)
	if got.Conclusion != "failed" || !strings.Contains(got.JobLog, "Bad action") {
		t.Errorf("refused job: conclusion %q, log %q (want failed, naming the step)", got.Conclusion, got.JobLog)
	}
	checkClean(t, f)
}

func TestCoordinatorEncryptedMessages(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	f.EncryptMessages = true
	c, _ := jitCoordinator(t, f, "jit-enc")
	fj := f.QueueJob(fakegithub.JobSpec{Name: "enc", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Job(); err != nil {
		t.Fatal(err)
	}
	d := start(t, l)
	f.Cancel(fj.ID) // the cancellation arrives encrypted too
	select {
	case <-d.cancelled:
	case <-time.After(20 * time.Second):
		t.Fatal("encrypted JobCancellation not understood")
	}
	if err := d.finish(t, job.Outcome{State: job.Canceled}); err != nil {
		t.Fatal(err)
	}
	checkClean(t, f)
}

// A runner deleted while its poll is held loses its session first; the
// new session's RunnerNotFound must stop it too.
func TestCoordinatorDeletedDuringPoll(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 5 * time.Second
	c, id := jitCoordinator(t, f, "jit-deleted-poll")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := make(chan error, 1)
	go func() { _, err := c.Acquire(ctx); first <- err }()
	for f.Sessions() == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the poll is held
	f.DeleteRunner(id)
	err := <-first
	if !errors.Is(err, job.ErrCoordinatorGone) {
		_, err = c.Acquire(ctx)
	}
	if !errors.Is(err, job.ErrCoordinatorGone) {
		t.Fatalf("Acquire after deletion during a poll = %v, want ErrCoordinatorGone", err)
	}
}

// Renewals that keep failing past lockedUntil (plus the grace) abort the
// job, which is reported abandoned.
func TestCoordinatorLockLapseAbandonsJob(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	f.LockDuration = 200 * time.Millisecond
	enc, _ := f.JITConfig("jit-lapse")
	reg, _ := ParseJITConfig(enc)
	c, err := New(Config{Name: "lapse", Registration: reg, Convert: testConvert, RenewInterval: 50 * time.Millisecond,
		ErrorWait: 30 * time.Millisecond, LockGrace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	fj := f.QueueJob(fakegithub.JobSpec{Name: "lapse", Steps: []fakegithub.Step{{Name: "A", Run: "sleep 600"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Job(); err != nil {
		t.Fatal(err)
	}
	f.FailRenewals(1 << 30) // GitHub unreachable for renewals from now on
	d := start(t, l)
	select {
	case err := <-d.aborted:
		if !errors.Is(err, ErrLockLost) {
			t.Errorf("abort cause %v, want ErrLockLost", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a job whose lock lapsed was not aborted")
	}
	f.FailRenewals(0)
	if err := d.finish(t, job.Outcome{State: job.Failed, Aborted: true}); err != nil {
		t.Fatal(err)
	}
	if got := f.Job(fj.ID); got.Conclusion != "abandoned" {
		t.Errorf("conclusion %q, want abandoned", got.Conclusion)
	}
}

// A report that failed can be retried on the same lease.
func TestFinishTwice(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	c, _ := jitCoordinator(t, f, "jit-twice")
	fj := f.QueueJob(fakegithub.JobSpec{Name: "twice", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Job(); err != nil {
		t.Fatal(err)
	}
	d := start(t, l)
	d.step("A", "x\n")
	f.FailRenewals(0)
	o := job.Outcome{State: job.Success, Steps: []job.StepResult{{Name: "A"}}}
	if err := d.finish(t, o); err != nil {
		t.Fatal(err)
	}
	// The job is complete: a second report says GitHub no longer knows it.
	if err := d.finish(t, o); !errors.Is(err, job.ErrJobGone) {
		t.Errorf("second Finish = %v, want ErrJobGone", err)
	}
	if got := f.Job(fj.ID); got.Conclusion != "succeeded" {
		t.Errorf("conclusion %q", got.Conclusion)
	}
}
