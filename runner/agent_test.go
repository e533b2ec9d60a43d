package runner

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash/crc32"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/runner/gitlab"
	"github.com/airlock-ci/airlock/runner/job"
)

// agentEnv is a fake GitLab with one registered runner, a real runner on
// Docker with a runner id of its own, and a state directory. At cleanup it
// asserts that no container of the runner id is left.
type agentEnv struct {
	gl       *fakegitlab.Server
	token    string // runner authentication token
	runnerID string
	ex       *docker.Executor
	r        *Runner
	rec      *recordingRunner
	stateDir string
	runtime  string
}

func newAgentEnv(t testing.TB) *agentEnv {
	t.Helper()
	testenv.RequireTestImage(t)
	gl := fakegitlab.New(t)
	gl.SetTraceUpdateInterval(1)
	e := &agentEnv{gl: gl, token: "glrt-" + agentRandomHex(10), runnerID: "a" + agentRandomHex(5),
		stateDir: t.TempDir(), runtime: t.TempDir()}
	gl.AddRunner(e.token)
	ex, err := docker.New(context.Background(), docker.Config{Grace: time.Second, StepServer: testenv.StepServer(t), RuntimeDir: e.runtime}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.ex = ex
	e.r = e.newRunner(t)
	e.rec = &recordingRunner{inner: e.r, out: map[string]*lockedBuffer{}}
	t.Cleanup(func() {
		left, err := ex.Leftovers(context.Background(), e.runnerID)
		if err != nil {
			t.Errorf("listing leftovers: %v", err)
		}
		for _, l := range left {
			t.Errorf("container %s of runner %s left behind", l.ID, e.runnerID)
			ex.Remove(context.Background(), l.ID)
		}
		ex.Close()
	})
	return e
}

func (e *agentEnv) newRunner(t testing.TB) *Runner {
	t.Helper()
	r, err := New(Config{RunnerID: e.runnerID, RuntimeDir: e.runtime, Grace: time.Second, Pull: executors.PullNever}, e.ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// agentTestConfig is an agent configuration plus the GitLab runners it
// serves; startAgent turns the runners into coordinators.
type agentTestConfig struct {
	AgentConfig
	Runners       []gitlab.RunnerConfig
	HTTPClient    *http.Client
	TraceInterval time.Duration
	KeepAlive     time.Duration
	TokenRotated  func(gitlab.RunnerConfig) error
	Git           string
	Cache         gitlab.CacheStore
	GitCacheDir   string
	VaultServers  []string
}

// build makes the coordinators and returns the agent configuration.
func (c agentTestConfig) build(t testing.TB) AgentConfig {
	t.Helper()
	cfg := c.AgentConfig
	cfg.Coordinators = nil
	for _, rc := range c.Runners {
		co, err := gitlab.NewCoordinator(gitlab.CoordinatorConfig{
			Runner: rc, SystemID: "s_0123456789ab", HTTPClient: c.HTTPClient,
			TraceInterval: c.TraceInterval, KeepAlive: c.KeepAlive, TokenRotated: c.TokenRotated,
			Git: c.Git, Logger: cfg.Logger, Observer: metricsObserver(cfg.Metrics), Cache: c.Cache,
			GitCacheDir: c.GitCacheDir, VaultServers: c.VaultServers,
		})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Coordinators = append(cfg.Coordinators, co)
	}
	return cfg
}

func metricsObserver(m *Metrics) gitlab.RequestObserver {
	if m == nil {
		return nil
	}
	return m.CoordinatorRequests("test")
}

// config is an agent configuration for the env's runner, quick to poll.
func (e *agentEnv) config(concurrent int) agentTestConfig {
	return agentTestConfig{
		AgentConfig: AgentConfig{
			Concurrent:      concurrent,
			CheckInterval:   100 * time.Millisecond,
			ShutdownTimeout: time.Minute,
			StateDir:        e.stateDir,
			BackoffMin:      50 * time.Millisecond,
			BackoffMax:      300 * time.Millisecond,
			Logger:          hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr, Name: "agent"}),
		},
		Runners:       []gitlab.RunnerConfig{{Name: "test", URL: e.gl.URL, Token: e.token}},
		HTTPClient:    e.gl.Client(),
		TraceInterval: 200 * time.Millisecond,
		KeepAlive:     time.Second,
	}
}

// start runs an agent until the returned stop is called (stop cancels the
// run context, the SIGTERM path, and waits for Run to return).
func startAgent(t testing.TB, tc agentTestConfig, jr JobRunner) (*Agent, func()) {
	t.Helper()
	a, err := NewAgent(tc.build(t), jr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Agent.Run() = %v", err)
				}
			case <-time.After(3 * time.Minute):
				t.Errorf("Agent.Run did not return after its context was cancelled")
			}
		})
	}
	t.Cleanup(stop)
	return a, stop
}

// gitlabSpec is a job for the test image that needs no sources.
func gitlabSpec(script []string, after []string) fakegitlab.JobSpec {
	return fakegitlab.JobSpec{Image: testenv.TestImage, Script: script, AfterScript: after,
		Variables: []fakegitlab.Variable{{Key: "GIT_STRATEGY", Value: "none", Public: true}}}
}

// recordingRunner runs jobs with inner and records their output and how
// many ran at once.
type recordingRunner struct {
	inner JobRunner

	mu         sync.Mutex
	out        map[string]*lockedBuffer
	running    int
	maxRunning int
}

func (r *recordingRunner) Run(ctx context.Context, j *job.Job, o RunOptions) (*Result, error) {
	buf := &lockedBuffer{}
	r.mu.Lock()
	r.out[j.ID] = buf
	r.running++
	r.maxRunning = max(r.maxRunning, r.running)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running--
		r.mu.Unlock()
	}()
	o.Out = &teeWriter{a: o.Out, b: buf}
	return r.inner.Run(ctx, j, o)
}

// output is what the runner wrote for GitLab job id (of any instance).
func (r *recordingRunner) output(id int64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for jid, b := range r.out {
		if strings.HasSuffix(jid, "-"+fmt.Sprint(id)) {
			return b.String()
		}
	}
	return ""
}

func (r *recordingRunner) max() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxRunning
}

type teeWriter struct {
	a, b interface{ Write([]byte) (int, error) }
}

func (w *teeWriter) Write(p []byte) (int, error) {
	w.b.Write(p)
	return w.a.Write(p)
}

func waitJob(t testing.TB, gl *fakegitlab.Server, id int64, d time.Duration) fakegitlab.JobState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	st, err := gl.WaitFinished(ctx, id)
	if err != nil {
		t.Fatalf("job %d did not finish: %v (state %+v)\ntrace:\n%s", id, err, st, gl.Trace(id))
	}
	return st
}

// waitTrace waits until the fake's trace of id contains s.
func waitTrace(t testing.TB, gl *fakegitlab.Server, id int64, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !bytes.Contains(gl.Trace(id), []byte(s)) {
		if time.Now().After(deadline) {
			t.Fatalf("trace of job %d never showed %q; it is:\n%s", id, s, gl.Trace(id))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// traceBodiesContain reports whether a trace PATCH or artifact upload of
// any job carried v.
func traceBodiesContain(gl *fakegitlab.Server, v string) bool {
	for _, r := range gl.Requests() {
		if (r.Method == "PATCH" || strings.HasSuffix(r.Path, "/artifacts")) && bytes.Contains(r.Body, []byte(v)) {
			return true
		}
	}
	return false
}

func TestAgentJobs(t *testing.T) {
	e := newAgentEnv(t)
	const secret = "s3cr3t-Value-8f2a91"
	bigScript := []string{"dd if=/dev/zero bs=1024 count=3584 2>/dev/null | tr '\\0' 'x'", "echo", "echo big-done"}
	// The job holds only a surrogate of its job token (the runner keeps
	// the token for its own calls, which the other checks exercise).
	masked := gitlabSpec([]string{"echo value=$SECRET_VAL", "echo token=$CI_JOB_TOKEN",
		`echo token-sha=$(printf %s "$CI_JOB_TOKEN" | sha256sum | cut -c1-16)`,
		`case "$CI_JOB_TOKEN" in glcbt-airlock_*) echo token-is-surrogate;; esac`}, nil)
	masked.Token = "glcbt-64_agent-test-job-token-0123"
	// A GitLab by name (the fake's own URL is an address, which keeps
	// the token in the job).
	masked.Variables = append(masked.Variables, fakegitlab.Variable{Key: "CI_SERVER_URL", Value: "https://gitlab.example.test", Public: true})
	realSHA := sha256.Sum256([]byte(masked.Token))
	masked.Variables = append(masked.Variables, fakegitlab.Variable{Key: "SECRET_VAL", Value: secret, Masked: true})
	undeclared := gitlabSpec([]string{"echo must-not-run"}, nil)
	undeclared.Secrets = "deploy_token" // no grant (this runner has no broker at all)
	timeout := gitlabSpec([]string{"echo sleeping", "sleep 120"}, []string{"echo after-timeout"})
	// Long enough for a container to start on a loaded machine: the
	// timeout covers preparation too, as in GitLab.
	timeout.Timeout = 15 * time.Second

	tests := []struct {
		name     string
		spec     fakegitlab.JobSpec
		status   string // fake's final job status
		reason   string
		exit     int
		wantOut  []string
		notOut   []string
		minTrace int
	}{
		{name: "success", spec: gitlabSpec([]string{"echo hello from job $CI_JOB_ID"}, nil),
			status: "success", wantOut: []string{"hello from job ", "Job succeeded\n"}},
		{name: "script failure", spec: gitlabSpec([]string{"echo before", "exit 3", "echo never"}, nil),
			status: "failed", reason: "script_failure", exit: 3, wantOut: []string{"before\n", "ERROR: Job failed: exit code 3"}},
		{name: "timeout", spec: timeout,
			status: "failed", reason: "job_execution_timeout", wantOut: []string{"sleeping\n", "after-timeout\n"}},
		{name: "trace of several 1 MiB chunks", spec: gitlabSpec(bigScript, nil),
			status: "success", wantOut: []string{"big-done\n"}, minTrace: 3 << 20},
		{name: "ungranted secret", spec: undeclared,
			status: "failed", reason: "unmet_prerequisites", wantOut: []string{"ERROR: Job failed (unmet_prerequisites)", "deploy_token"}},
		{name: "masked variable and job token", spec: masked,
			status: "success", wantOut: []string{"value=[MASKED]", "token=[MASKED]", "token-is-surrogate"},
			notOut: []string{fmt.Sprintf("token-sha=%x", realSHA[:8])}},
	}
	ids := make([]int64, len(tests))
	for i, tc := range tests {
		ids[i] = e.gl.Enqueue(tc.spec)
	}
	m := NewMetrics()
	e.r.Hooks = append(e.r.Hooks, m)
	cfg := e.config(3)
	cfg.Metrics = m
	_, stop := startAgent(t, cfg, e.rec)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := ids[i]
			st := waitJob(t, e.gl, id, 3*time.Minute)
			trace := e.gl.Trace(id)
			if st.Status != tc.status || st.FailureReason != tc.reason {
				t.Errorf("job ended %s/%q, want %s/%q\ntrace:\n%s", st.Status, st.FailureReason, tc.status, tc.reason, trace)
			}
			if tc.exit != 0 && (st.ExitCode == nil || *st.ExitCode != tc.exit) {
				t.Errorf("exit_code = %v, want %d", st.ExitCode, tc.exit)
			}
			for _, w := range tc.wantOut {
				if !bytes.Contains(trace, []byte(w)) {
					t.Errorf("trace lacks %q:\n%.2000s", w, trace)
				}
			}
			for _, w := range tc.notOut {
				if bytes.Contains(trace, []byte(w)) {
					t.Errorf("trace shows %q:\n%.2000s", w, trace)
				}
			}
			if want := fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(trace)); st.Checksum != want || st.Bytesize != int64(len(trace)) {
				t.Errorf("reported output %s/%d, the fake holds %s/%d", st.Checksum, st.Bytesize, want, len(trace))
			}
			// The trace is exactly what the runner wrote, then the summary.
			out := e.rec.output(id)
			if !bytes.HasPrefix(trace, []byte(out)) || out == "" {
				t.Errorf("trace does not start with the runner's output (%d vs %d bytes)", len(trace), len(out))
			}
			if len(trace) < tc.minTrace {
				t.Errorf("trace has %d bytes, want at least %d", len(trace), tc.minTrace)
			}
			if st.MaxChunk > 1<<20 {
				t.Errorf("largest trace PATCH = %d bytes, want at most 1 MiB", st.MaxChunk)
			}
			if bytes.Contains(trace, []byte(st.Token)) {
				t.Errorf("trace shows the job token")
			}
			if traceBodiesContain(e.gl, st.Token) {
				t.Errorf("a trace or artifact request carried the job token")
			}
		})
	}
	stop()
	metrics := scrapeMetrics(t, m)
	for _, want := range []string{
		`airlock_jobs_total{failure_reason="",state="success"} 3`,
		`airlock_jobs_total{failure_reason="script_failure",state="failed"} 1`,
		`airlock_jobs_total{failure_reason="job_execution_timeout",state="failed"} 1`,
		`airlock_jobs_total{failure_reason="unauthorized",state="failed"} 1`,
		`airlock_jobs_running 0`,
		`airlock_job_duration_seconds_count 6`,
		`airlock_api_requests_total{coordinator="test",endpoint="/jobs/request",method="POST",status="201"} 6`,
		`airlock_api_requests_total{coordinator="test",endpoint="/jobs/:id",method="PUT",status="200"}`,
		`airlock_api_requests_total{coordinator="test",endpoint="/jobs/:id/trace",method="PATCH",status="202"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if e.gl.BodiesContain(secret) {
		t.Errorf("a masked variable's value reached GitLab")
	}
	if ents, _ := os.ReadDir(filepath.Join(e.stateDir, agentJournalDir)); len(ents) != 0 {
		t.Errorf("job journal not empty after every job was reported: %v", ents)
	}
}

func TestAgentServerCancel(t *testing.T) {
	tests := []struct {
		name   string
		cancel func(gl *fakegitlab.Server, id int64)
		after  bool // after_script output expected
	}{
		// canceling: the script stops, after_script runs, then canceled.
		{name: "canceling", cancel: (*fakegitlab.Server).Cancel, after: true},
		// canceled at once: the job is aborted, nothing more runs.
		{name: "canceled", cancel: (*fakegitlab.Server).ForceCancel},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newAgentEnv(t)
			id := e.gl.Enqueue(gitlabSpec([]string{"echo started", "sleep 120", "echo never"}, []string{"echo after-ran"}))
			_, stop := startAgent(t, e.config(1), e.rec)
			defer stop()
			waitTrace(t, e.gl, id, "started\n", time.Minute)
			tc.cancel(e.gl, id)
			if st := waitJob(t, e.gl, id, 2*time.Minute); st.Status != "canceled" {
				t.Errorf("job status = %s, want canceled\n%s", st.Status, e.gl.Trace(id))
			}
			// The slot comes back: the next job runs.
			next := e.gl.Enqueue(gitlabSpec([]string{"echo next"}, nil))
			if st := waitJob(t, e.gl, next, 2*time.Minute); st.Status != "success" {
				t.Errorf("next job ended %s, want success", st.Status)
			}
			out := e.rec.output(id)
			if ran := strings.Contains(out, "after-ran\n"); ran != tc.after || strings.Contains(out, "never\n") {
				t.Errorf("job output after %s: after_script ran = %v, want %v; no script output after the cancel:\n%s",
					tc.name, ran, tc.after, out)
			}
		})
	}
}

func TestAgentMalformedPayload(t *testing.T) {
	e := newAgentEnv(t)
	bad := e.gl.Enqueue(fakegitlab.JobSpec{Payload: func(id int64, token string) []byte {
		return []byte(fmt.Sprintf(`{"id": %d, "token": %q, "steps": "not a list"}`, id, token))
	}})
	unsupported := e.gl.Enqueue(fakegitlab.JobSpec{Payload: func(id int64, token string) []byte {
		return []byte(fmt.Sprintf(`{"id": %d, "token": %q, "job_info": {"project_full_path": "a/b"},
			"image": {"name": %q}, "run": [{"name": "step", "script": "true"}],
			"steps": [{"name": "script", "script": ["true"], "when": "on_success"}]}`, id, token, testenv.TestImage))
	}})
	good := e.gl.Enqueue(gitlabSpec([]string{"echo still-serving"}, nil))
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()
	for _, id := range []int64{bad, unsupported} {
		st := waitJob(t, e.gl, id, time.Minute)
		if st.Status != "failed" || st.FailureReason != "runner_system_failure" {
			t.Errorf("malformed job %d ended %s/%q, want failed/runner_system_failure", id, st.Status, st.FailureReason)
		}
		if !bytes.Contains(e.gl.Trace(id), []byte("ERROR: Job failed (system failure)")) {
			t.Errorf("malformed job %d: trace does not say why:\n%s", id, e.gl.Trace(id))
		}
	}
	if st := waitJob(t, e.gl, good, 2*time.Minute); st.Status != "success" {
		t.Errorf("job after the malformed ones ended %s, want success", st.Status)
	}
}

func TestAgentConcurrency(t *testing.T) {
	tests := []struct {
		name       string
		concurrent int
		limit      int
		jobs       int
		wantMax    int
	}{
		{name: "global concurrent", concurrent: 2, jobs: 3, wantMax: 2},
		{name: "runner limit below concurrent", concurrent: 4, limit: 1, jobs: 2, wantMax: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newAgentEnv(t)
			var ids []int64
			for range tc.jobs {
				ids = append(ids, e.gl.Enqueue(gitlabSpec([]string{"sleep 2"}, nil)))
			}
			cfg := e.config(tc.concurrent)
			cfg.Runners[0].Limit = tc.limit
			_, stop := startAgent(t, cfg, e.rec)
			defer stop()
			for _, id := range ids {
				if st := waitJob(t, e.gl, id, 3*time.Minute); st.Status != "success" {
					t.Errorf("job %d ended %s, want success", id, st.Status)
				}
			}
			if got := e.rec.max(); got > tc.wantMax || got < 1 {
				t.Errorf("at most %d jobs ran at once, want 1..%d", got, tc.wantMax)
			}
		})
	}
}

func TestAgentDrain(t *testing.T) {
	tests := []struct {
		name     string
		timeout  time.Duration
		abort    bool // a second signal
		script   []string
		status   string
		reason   string
		wantOut  string
		notOut   string
		maxAfter time.Duration // how long Run may take after the stop
	}{
		{name: "running job finishes", timeout: 2 * time.Minute, script: []string{"echo started", "sleep 3", "echo finished"},
			status: "success", wantOut: "finished\n"},
		{name: "aborted after shutdown_timeout", timeout: 2 * time.Second, script: []string{"echo started", "sleep 120", "echo never"},
			status: "failed", reason: "runner_system_failure", wantOut: "shutdown_timeout passed", notOut: "never\n"},
		{name: "second signal aborts at once", timeout: time.Hour, abort: true, script: []string{"echo started", "sleep 120", "echo never"},
			status: "failed", reason: "runner_system_failure", wantOut: "told to stop at once", notOut: "never\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newAgentEnv(t)
			id := e.gl.Enqueue(gitlabSpec(tc.script, nil))
			cfg := e.config(2)
			cfg.ShutdownTimeout = tc.timeout
			a, err := NewAgent(cfg.build(t), e.rec)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			waitTrace(t, e.gl, id, "started\n", time.Minute)

			cancel() // SIGTERM
			requests := len(e.gl.RequestsTo("POST", "/api/v4/jobs/request"))
			later := e.gl.Enqueue(gitlabSpec([]string{"true"}, nil))
			if tc.abort {
				time.Sleep(500 * time.Millisecond)
				a.Abort()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Agent.Run() = %v", err)
				}
			case <-time.After(3 * time.Minute):
				t.Fatalf("Agent.Run did not return")
			}
			st := e.gl.Job(id)
			trace := e.gl.Trace(id)
			if !st.Finished || st.Status != tc.status || st.FailureReason != tc.reason {
				t.Errorf("running job: finished %v, %s/%q; want %s/%q\n%s", st.Finished, st.Status, st.FailureReason, tc.status, tc.reason, trace)
			}
			if !bytes.Contains(trace, []byte(tc.wantOut)) || (tc.notOut != "" && bytes.Contains(trace, []byte(tc.notOut))) {
				t.Errorf("trace: want %q, not %q:\n%s", tc.wantOut, tc.notOut, trace)
			}
			// No request starts after the stop; one already in flight may
			// still bring the later job, which must then be run (or, after
			// an abort, reported), never left assigned and unreported.
			if st := e.gl.Job(later); st.Status != "pending" && !st.Finished {
				t.Errorf("job queued after the stop is %s and unfinished, want pending (not requested) or reported", st.Status)
			}
			if n := len(e.gl.RequestsTo("POST", "/api/v4/jobs/request")); n > requests+1 {
				t.Errorf("%d job requests after the stop, want at most the one in flight", n-requests)
			}
		})
	}
}

func TestAgentBacksOff(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		retry   string
		count   int
		minGap  time.Duration
		minReqs int
	}{
		{name: "5xx storm", status: 503, count: 6, minGap: 50 * time.Millisecond, minReqs: 7},
		{name: "429 with Retry-After", status: 429, retry: "1", count: 2, minGap: 900 * time.Millisecond, minReqs: 3},
		{name: "502 storm", status: 502, count: 4, minGap: 50 * time.Millisecond, minReqs: 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newAgentEnv(t)
			e.gl.InjectFault(fakegitlab.Fault{Method: "POST", Path: "/api/v4/jobs/request", Status: tc.status, Count: tc.count, RetryAfter: tc.retry})
			id := e.gl.Enqueue(gitlabSpec([]string{"echo after-storm"}, nil))
			_, stop := startAgent(t, e.config(1), e.rec)
			defer stop()
			if st := waitJob(t, e.gl, id, 2*time.Minute); st.Status != "success" {
				t.Errorf("job ended %s, want success", st.Status)
			}
			reqs := e.gl.RequestsTo("POST", "/api/v4/jobs/request")
			if len(reqs) < tc.minReqs {
				t.Fatalf("%d job requests, want at least %d", len(reqs), tc.minReqs)
			}
			for i := 1; i < tc.count+1 && i < len(reqs); i++ {
				if gap := reqs[i].Time.Sub(reqs[i-1].Time); gap < tc.minGap {
					t.Errorf("request %d came %s after a failed one, want at least %s (back-off)", i, gap, tc.minGap)
				}
			}
		})
	}
}

func TestAgentChecksOutOnTheHost(t *testing.T) {
	e := newAgentEnv(t)
	s := newCheckoutServer(t)
	id := e.gl.Enqueue(fakegitlab.JobSpec{Payload: func(id int64, token string) []byte {
		s.mu.Lock()
		s.Token = token
		s.mu.Unlock()
		return []byte(fmt.Sprintf(`{"id": %d, "token": %q,
			"job_info": {"name": "checkout", "project_full_path": "platform/web-app"},
			"git_info": {"repo_url": %q, "ref": "main", "sha": %q, "ref_type": "branch", "depth": 1,
				"refspecs": ["+refs/heads/main:refs/remotes/origin/main"]},
			"runner_info": {"timeout": 120},
			"image": {"name": %q},
			"variables": [{"key": "CI_JOB_TOKEN", "value": %q, "masked": true}],
			"steps": [{"name": "script", "when": "on_success", "timeout": 120,
				"script": ["cat README", "test -d .git && echo has-git", "if grep -rqF '%s' .; then echo TOKEN-IN-WORKSPACE; else echo workspace-clean; fi"]}],
			"features": {"failure_reasons": ["script_failure", "runner_system_failure"]}}`,
			id, token, s.repoURL(token), s.SHAs[2], testenv.TestImage, token, token))
	}})
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()
	st := waitJob(t, e.gl, id, 2*time.Minute)
	trace := e.gl.Trace(id)
	if st.Status != "success" {
		t.Fatalf("job ended %s/%s, want success\n%s", st.Status, st.FailureReason, trace)
	}
	for _, w := range []string{"three\n", "has-git\n", "workspace-clean\n"} {
		if !bytes.Contains(trace, []byte(w)) {
			t.Errorf("trace lacks %q:\n%s", w, trace)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.requests) == 0 || s.refused > 0 {
		t.Errorf("git server saw %d requests, %d without the job token", len(s.requests), s.refused)
	}
}

// trailRunner gives every job a sealed audit trail, as a Runner with an
// Auditor does.
type trailRunner struct {
	inner JobRunner
	dir   string
}

func (r *trailRunner) Run(ctx context.Context, j *job.Job, o RunOptions) (*Result, error) {
	res, err := r.inner.Run(ctx, j, o)
	if res != nil {
		res.AuditTrail = filepath.Join(r.dir, j.ID+".jsonl")
		if werr := os.WriteFile(res.AuditTrail, []byte(`{"seq":1,"job":"`+j.ID+`","type":"job_finished"}`+"\n"), 0o600); werr != nil {
			return res, werr
		}
	}
	return res, err
}

func TestAgentUploadsAuditTrail(t *testing.T) {
	e := newAgentEnv(t)
	id := e.gl.Enqueue(gitlabSpec([]string{"exit 1"}, nil))
	_, stop := startAgent(t, e.config(1), &trailRunner{inner: e.rec, dir: t.TempDir()})
	defer stop()
	if st := waitJob(t, e.gl, id, time.Minute); st.Status != "failed" {
		t.Errorf("job ended %s, want failed", st.Status)
	}
	arts := e.gl.Artifacts(id)
	if len(arts) != 1 {
		t.Fatalf("job has %d artifacts, want the audit trail", len(arts))
	}
	a := arts[0]
	if a.Name != gitlab.AuditArtifact || a.Type != "archive" || a.Format != "zip" {
		t.Errorf("artifact %s (%s, %s), want %s (archive, zip)", a.Name, a.Type, a.Format, gitlab.AuditArtifact)
	}
	zr, err := zip.NewReader(bytes.NewReader(a.Data), int64(len(a.Data)))
	if err != nil {
		t.Fatalf("artifact is not a zip: %v", err)
	}
	want := gitlab.AuditEntry
	if len(zr.File) != 1 || zr.File[0].Name != want {
		t.Fatalf("zip holds %v, want %s", zr.File, want)
	}
	// Uploaded before the final update: the job token dies with it.
	var upload, final time.Time
	for _, r := range e.gl.Requests() {
		switch {
		case strings.HasSuffix(r.Path, "/artifacts"):
			upload = r.Time
		case r.Method == "PUT" && bytes.Contains(r.Body, []byte(`"state":"failed"`)):
			final = r.Time
		}
	}
	if upload.IsZero() || final.IsZero() || !upload.Before(final) {
		t.Errorf("artifact uploaded at %v, final state at %v; want the upload first", upload, final)
	}
}

// panicRunner panics on jobs named "boom" and runs the others.
type panicRunner struct{ inner JobRunner }

func (r panicRunner) Run(ctx context.Context, j *job.Job, o RunOptions) (*Result, error) {
	if j.Name == "boom" {
		panic("runner bug")
	}
	return r.inner.Run(ctx, j, o)
}

func TestAgentSurvivesRunnerPanic(t *testing.T) {
	e := newAgentEnv(t)
	boom := gitlabSpec([]string{"true"}, nil)
	boom.Name = "boom"
	bad := e.gl.Enqueue(boom)
	good := e.gl.Enqueue(gitlabSpec([]string{"echo fine"}, nil))
	_, stop := startAgent(t, e.config(1), panicRunner{e.rec})
	defer stop()
	if st := waitJob(t, e.gl, bad, time.Minute); st.Status != "failed" || st.FailureReason != "runner_system_failure" {
		t.Errorf("job whose run panicked ended %s/%q, want failed/runner_system_failure", st.Status, st.FailureReason)
	}
	if st := waitJob(t, e.gl, good, time.Minute); st.Status != "success" {
		t.Errorf("next job ended %s, want success", st.Status)
	}
}

func TestAgentRunnersShareTheGlobalLimit(t *testing.T) {
	e := newAgentEnv(t)
	idle := fakegitlab.New(t) // a second GitLab that never has a job
	idleToken := "glrt-" + agentRandomHex(10)
	idle.AddRunner(idleToken)
	cfg := e.config(1)
	// The idle runner first: it must not keep the only slot to itself.
	cfg.Runners = append([]gitlab.RunnerConfig{{Name: "idle", URL: idle.URL, Token: idleToken}}, cfg.Runners...)
	cfg.HTTPClient = nil // both fakes are plain HTTP on loopback
	id := e.gl.Enqueue(gitlabSpec([]string{"echo served"}, nil))
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()
	if st := waitJob(t, e.gl, id, time.Minute); st.Status != "success" {
		t.Errorf("job of the second runner ended %s, want success", st.Status)
	}
	// And the idle runner gets its turns too.
	deadline := time.Now().Add(30 * time.Second)
	for len(idle.RequestsTo("POST", "/api/v4/jobs/request")) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the idle runner asked for jobs %d times, want turns", len(idle.RequestsTo("POST", "/api/v4/jobs/request")))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAgentRotatesToken(t *testing.T) {
	e := newAgentEnv(t)
	cfg := e.config(1)
	now := time.Now().UTC()
	cfg.Runners[0].TokenObtainedAt = now.Add(-3 * time.Hour)
	cfg.Runners[0].TokenExpiresAt = now.Add(30 * time.Minute) // 86% of its life used
	var mu sync.Mutex
	var saved []gitlab.RunnerConfig
	cfg.TokenRotated = func(rc gitlab.RunnerConfig) error {
		mu.Lock()
		defer mu.Unlock()
		saved = append(saved, rc)
		return nil
	}
	id := e.gl.Enqueue(gitlabSpec([]string{"true"}, nil))
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()
	if st := waitJob(t, e.gl, id, time.Minute); st.Status != "success" {
		t.Errorf("job ended %s, want success", st.Status)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(saved) != 1 {
		t.Fatalf("TokenRotated called %d times, want once", len(saved))
	}
	rc := saved[0]
	if rc.Token == e.token || !e.gl.HasRunner(rc.Token) || e.gl.HasRunner(e.token) {
		t.Errorf("after rotation: new token known %v, old token known %v; want only the new one",
			e.gl.HasRunner(rc.Token), e.gl.HasRunner(e.token))
	}
	if rc.TokenRotationDue(time.Now()) {
		t.Errorf("rotated token is due again (expires %v)", rc.TokenExpiresAt)
	}
	if n := len(e.gl.RequestsTo("POST", "/api/v4/runners/reset_authentication_token")); n != 1 {
		t.Errorf("%d token resets, want 1", n)
	}
}

// A job with release: runs GitLab's release commands after a script that
// succeeded, before after_script; they do not run after a failed script,
// and a failed release fails the job, as with gitlab-runner.
func TestAgentReleaseStep(t *testing.T) {
	e := newAgentEnv(t)
	spec := func(script, release string) fakegitlab.JobSpec {
		return fakegitlab.JobSpec{Payload: func(id int64, token string) []byte {
			return []byte(fmt.Sprintf(`{"id": %d, "token": %q, "job_info": {"name": "release", "project_full_path": "a/b"},
				"runner_info": {"timeout": 120}, "image": {"name": %q},
				"variables": [{"key": "GIT_STRATEGY", "value": "none", "public": true}],
				"steps": [{"name": "script", "script": [%q], "when": "on_success", "timeout": 120},
					{"name": "release", "script": [%q], "when": "on_success", "timeout": 120},
					{"name": "after_script", "script": ["echo after-ran"], "when": "always", "timeout": 120}],
				"features": {"failure_reasons": ["script_failure", "runner_system_failure"]}}`, id, token, testenv.TestImage, script, release))
		}}
	}
	ok := e.gl.Enqueue(spec("echo script-ran", "echo release-cli create --name v1"))
	noScript := e.gl.Enqueue(spec("exit 3", "echo release-ran-anyway"))
	badRelease := e.gl.Enqueue(spec("echo script-ran", "exit 7"))
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()

	st := waitJob(t, e.gl, ok, 2*time.Minute)
	trace := string(e.gl.Trace(ok))
	s, r, a := strings.Index(trace, "script-ran"), strings.Index(trace, "release-cli create --name v1\n"), strings.Index(trace, "after-ran")
	if st.Status != "success" || s < 0 || r < s || a < r {
		t.Errorf("job with a release ended %s; want success with script, release, after_script in order:\n%s", st.Status, trace)
	}
	st = waitJob(t, e.gl, noScript, 2*time.Minute)
	if trace := string(e.gl.Trace(noScript)); st.Status != "failed" || strings.Contains(trace, "release-ran-anyway") || !strings.Contains(trace, "after-ran") {
		t.Errorf("release after a failed script: ended %s:\n%s", st.Status, trace)
	}
	if st = waitJob(t, e.gl, badRelease, 2*time.Minute); st.Status != "failed" || st.FailureReason != "script_failure" {
		t.Errorf("a failed release: ended %s/%s, want failed/script_failure", st.Status, st.FailureReason)
	}
}
