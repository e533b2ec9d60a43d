package runner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/gitlab"
	"github.com/airlock-ci/airlock/runner/job"
)

// JobRunner runs one job to its end (Runner is one). Run is called from
// several goroutines at once, one per job; it must honour the contract of
// Runner.Run: cancelling ctx aborts the job, closing o.Cancel cancels it
// (after_script still runs), teardown happens on every path, and
// everything about the job itself is in the Result.
type JobRunner interface {
	Run(ctx context.Context, j *job.Job, o RunOptions) (*Result, error)
}

// AgentConfig configures an Agent.
type AgentConfig struct {
	// Runners are the [[runners]] entries to serve (one poll loop each).
	Runners []gitlab.RunnerConfig
	// Concurrent bounds the jobs running at once over all runners
	// (default 1); each runner's Limit bounds its own.
	Concurrent int
	// CheckInterval is the pause between job requests that found no job
	// (default 3s).
	CheckInterval time.Duration
	// ShutdownTimeout is how long running jobs may go on once the agent
	// is told to stop; then they are aborted. 0 aborts them at once.
	ShutdownTimeout time.Duration
	// StateDir holds the journal of jobs in flight and the system id.
	StateDir string
	// SystemID identifies this runner manager to GitLab; default
	// gitlab.SystemID(StateDir).
	SystemID string
	// DefaultImage runs jobs that name no image.
	DefaultImage string
	// Version and Revision are reported to GitLab.
	Version, Revision string
	// HTTPClient sends the API requests (default: the gitlab package's).
	HTTPClient *http.Client
	// Metrics, if set, counts API requests and rejected jobs. (Add it to
	// the Runner's Hooks too for job counts.)
	Metrics *Metrics
	// TraceInterval is how often the job log is sent (default: GitLab's
	// X-GitLab-Trace-Update-Interval, 3s before GitLab says otherwise).
	TraceInterval time.Duration
	// KeepAlive is how long the job log may stay quiet before the job is
	// touched (PUT state=running), which is also when a cancel made in
	// GitLab is noticed during silence (default 30s, gitlab-runner's).
	KeepAlive time.Duration
	// BackoffMin and BackoffMax bound the wait after a failed job request
	// (defaults 1s and 60s), with full jitter; Retry-After is honoured.
	BackoffMin, BackoffMax time.Duration
	// Git is the git binary sources are cloned with on the host (default
	// "git" from PATH).
	Git string
	// RecoverLocal, if set, cleans up what jobs of this runner left on the
	// host after a crash (credentials, containers, sandboxes) and returns
	// them (Runner.Recover). It runs once at start, before the crashed jobs
	// are reported to GitLab with their sealed audit trails.
	RecoverLocal func(ctx context.Context) ([]Recovered, error)
	// TokenRotated, if set, persists a runner token the agent rotated
	// (at 75% of its lifetime, see gitlab.RunnerConfig.TokenRotationDue):
	// the old token no longer works, so the new one must reach the
	// configuration file. rc is the runner's entry with the new token.
	TokenRotated func(rc gitlab.RunnerConfig) error
	// Logger is the runner log (never job output).
	Logger hclog.Logger
}

// Agent serves GitLab runners: it polls for jobs within the concurrency
// limits, runs each through a JobRunner, streams its log, uploads its
// audit trail and reports its final state. Jobs in flight are journaled
// so that after a crash the next start reports them failed.
type Agent struct {
	cfg     AgentConfig
	runner  JobRunner
	log     hclog.Logger
	journal *agentJournal
	slots   chan struct{} // global concurrency

	clientsMu sync.Mutex
	clients   map[string]*gitlab.Client // by coordinator URL

	// jobsCtx is the parent of every job's context; cancelling it aborts
	// every running job.
	jobsCtx   context.Context
	abortJobs context.CancelCauseFunc
	// reportCtx outlives jobs: trace, artifact and final-state calls.
	reportCtx    context.Context
	cancelReport context.CancelFunc
	jobs         sync.WaitGroup

	abortOnce sync.Once
	abortCh   chan struct{}
	runOnce   sync.Once
}

// errShutdownTimeout is the cause jobs are aborted with when the agent's
// shutdown timeout passes.
var errShutdownTimeout = fmt.Errorf("%w: the runner is shutting down and shutdown_timeout passed", ErrAborted)

// errAgentAbort is the cause jobs are aborted with by Abort.
var errAgentAbort = fmt.Errorf("%w: the runner was told to stop at once", ErrAborted)

// NewAgent returns an agent that runs jobs with r.
func NewAgent(cfg AgentConfig, r JobRunner) (*Agent, error) {
	if r == nil {
		return nil, errors.New("creating agent: no job runner")
	}
	if len(cfg.Runners) == 0 {
		return nil, errors.New("creating agent: no [[runners]] configured; run `airlock register` first")
	}
	var errs []error
	for i, rc := range cfg.Runners {
		errs = append(errs, rc.Validate(fmt.Sprintf("runners[%d]", i))...)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("creating agent: %w", errors.Join(errs...))
	}
	if cfg.StateDir == "" {
		return nil, errors.New("creating agent: state directory is required")
	}
	if cfg.Concurrent <= 0 {
		cfg.Concurrent = 1
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 3 * time.Second
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 60 * time.Second
	}
	if cfg.Git == "" {
		cfg.Git = "git"
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.SystemID == "" {
		id, err := gitlab.SystemID(cfg.StateDir)
		if err != nil {
			return nil, fmt.Errorf("creating agent: %w", err)
		}
		cfg.SystemID = id
	}
	jr, err := openAgentJournal(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("creating agent: %w", err)
	}
	a := &Agent{
		cfg:     cfg,
		runner:  r,
		log:     cfg.Logger,
		journal: jr,
		slots:   make(chan struct{}, cfg.Concurrent),
		clients: map[string]*gitlab.Client{},
		abortCh: make(chan struct{}),
	}
	a.jobsCtx, a.abortJobs = context.WithCancelCause(context.Background())
	a.reportCtx, a.cancelReport = context.WithCancel(context.Background())
	for _, rc := range cfg.Runners {
		if _, err := a.client(rc.URL); err != nil {
			return nil, fmt.Errorf("creating agent: %s: %w", rc, err)
		}
	}
	cfg.Metrics.SetConcurrent(cfg.Concurrent)
	return a, nil
}

// client returns the API client for a coordinator URL.
func (a *Agent) client(url string) (*gitlab.Client, error) {
	a.clientsMu.Lock()
	defer a.clientsMu.Unlock()
	if c := a.clients[url]; c != nil {
		return c, nil
	}
	opts := []gitlab.Option{
		gitlab.WithLogger(a.log.Named("gitlab")),
		gitlab.WithVersion(a.cfg.Version, a.cfg.Revision),
	}
	if a.cfg.HTTPClient != nil {
		opts = append(opts, gitlab.WithHTTPClient(a.cfg.HTTPClient))
	}
	if a.cfg.Metrics != nil {
		opts = append(opts, gitlab.WithRequestObserver(a.cfg.Metrics.APIRequest))
	}
	c, err := gitlab.New(url, opts...)
	if err != nil {
		return nil, err
	}
	a.clients[url] = c
	return c, nil
}

// Run reports jobs a crash left behind, then polls every runner for jobs
// and runs them until ctx ends. Then it drains: no new job is requested,
// running jobs may finish for ShutdownTimeout, then they are aborted (torn
// down, credentials revoked) and reported failed. Run returns when every
// job it started has been reported. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	first := false
	a.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("running agent: Run was already called")
	}
	defer a.cancelReport()
	defer a.abortJobs(nil)

	a.recover(ctx)

	pollCtx, stopPolling := context.WithCancel(ctx)
	defer stopPolling()
	var pollers sync.WaitGroup
	for _, rc := range a.cfg.Runners {
		c, err := a.client(rc.URL)
		if err != nil {
			return err // checked by NewAgent
		}
		limit := a.cfg.Concurrent
		if rc.Limit > 0 {
			limit = min(limit, rc.Limit)
		}
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			a.poll(pollCtx, rc, c, make(chan struct{}, limit))
		}()
	}
	a.log.Info("agent started", "runners", len(a.cfg.Runners), "concurrent", a.cfg.Concurrent, "system_id", a.cfg.SystemID)

	select {
	case <-ctx.Done():
	case <-a.abortCh:
	}
	stopPolling()
	pollers.Wait()

	done := make(chan struct{})
	go func() { a.jobs.Wait(); close(done) }()
	select {
	case <-done:
		a.log.Info("agent stopped; no job was running")
		return nil
	default:
	}
	a.log.Info("draining: no new jobs; waiting for running jobs", "shutdown_timeout", a.cfg.ShutdownTimeout)
	timer := time.NewTimer(a.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
		a.log.Info("agent stopped; every job finished")
		return nil
	case <-timer.C:
		a.log.Warn("shutdown_timeout passed; aborting running jobs")
		a.abortJobs(errShutdownTimeout)
	case <-a.abortCh:
		a.log.Warn("aborting running jobs")
		a.abortJobs(errAgentAbort)
	}
	<-done
	a.log.Info("agent stopped; running jobs were aborted and reported")
	return nil
}

// Abort stops the agent at once: no new jobs, running jobs aborted (torn
// down, credentials revoked) and reported. Run still returns only after
// they were reported. A second SIGTERM.
func (a *Agent) Abort() {
	a.abortOnce.Do(func() { close(a.abortCh) })
}

// poll requests jobs for one runner while a slot is free, until ctx ends.
// Each request holds a slot of the runner and a global one, which the job
// keeps; a request that finds no job gives them back at once, so that
// runners sharing the global limit take turns.
func (a *Agent) poll(ctx context.Context, rc gitlab.RunnerConfig, c *gitlab.Client, limit chan struct{}) {
	log := a.log.With("runner", rc.Name)
	bo := gitlab.NewBackoff(a.cfg.BackoffMin, a.cfg.BackoffMax)
	for {
		// A slot of this runner first, then a global one: never ask GitLab
		// for a job there is no room for.
		if !agentAcquire(ctx, limit) {
			return
		}
		if !agentAcquire(ctx, a.slots) {
			<-limit
			return
		}
		release := func() { <-a.slots; <-limit }
		// A select with both ready may pick the slot over a drain that
		// came meanwhile: no new request once draining has begun.
		if ctx.Err() != nil {
			release()
			return
		}
		if rc.TokenRotationDue(time.Now()) {
			if err := a.rotateToken(ctx, c, &rc, log); err != nil {
				release()
				wait := bo.Next(err)
				log.Error("rotating the runner token failed", "error", err, "wait", wait)
				if !agentSleep(ctx, wait) {
					return
				}
				continue
			}
		}
		start := time.Now()
		// A request in flight when draining begins is not cancelled: GitLab
		// may already have assigned it a job, which would then be lost
		// (stuck until it times out). It is answered (at once, or when
		// the long poll ends) and a job it brings is run as part of the
		// drain. Only an abort cancels it.
		resp, err := c.RequestJob(a.jobsCtx, rc.Token, a.cfg.SystemID)
		if err == nil && resp != nil {
			bo.Reset()
			a.jobs.Add(1)
			go func() {
				defer a.jobs.Done()
				defer release()
				a.handle(c, rc, resp)
			}()
			continue
		}
		release()
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		var pe *gitlab.PayloadError
		switch {
		case err == nil: // no job (204, or 409: another runner took it)
			bo.Reset()
			wait = a.cfg.CheckInterval - time.Since(start) // a long poll counts
		case errors.As(err, &pe):
			a.rejectPayload(c, pe, log)
			continue
		case errors.Is(err, gitlab.ErrTokenInvalid):
			wait = bo.Next(err)
			log.Error("GitLab refused the runner token; re-register the runner (airlock register)", "error", err, "wait", wait)
		case gitlab.IsRetryable(err):
			wait = bo.Next(err)
			log.Warn("job request failed; backing off", "error", err, "wait", wait)
		default:
			wait = bo.Next(err)
			log.Error("requesting a job failed", "error", err, "wait", wait)
		}
		if wait > 0 && !agentSleep(ctx, wait) {
			return
		}
	}
}

// rotateToken replaces the runner's token before it expires and has the
// new one persisted.
func (a *Agent) rotateToken(ctx context.Context, c *gitlab.Client, rc *gitlab.RunnerConfig, log hclog.Logger) error {
	creds, err := c.ResetToken(ctx, rc.Token)
	if err != nil {
		return err
	}
	rc.Token = creds.Token
	rc.TokenObtainedAt = time.Now().UTC().Truncate(time.Second)
	rc.TokenExpiresAt = creds.TokenExpiresAt
	log.Info("rotated the runner token", "expires", creds.TokenExpiresAt)
	if a.cfg.TokenRotated != nil {
		if err := a.cfg.TokenRotated(*rc); err != nil {
			// The old token is gone: without the new one in the file the
			// next start cannot authenticate. Say so loudly, go on.
			log.Error("saving the rotated runner token failed; the runner keeps working until it restarts, then needs `airlock register` again", "error", err)
		}
	}
	return nil
}

// agentAcquire takes a slot of sem, or returns false when ctx ends first.
func agentAcquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func agentSleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// rejectPayload fails a job whose payload could not be decoded.
func (a *Agent) rejectPayload(c *gitlab.Client, pe *gitlab.PayloadError, log hclog.Logger) {
	a.cfg.Metrics.JobRejected(string(gitlab.ReasonRunnerSystemFailure))
	if pe.ID <= 0 || pe.Token == "" {
		log.Error("GitLab sent a job that cannot be decoded and names no job to fail", "error", pe)
		return
	}
	log.Error("GitLab sent a job that cannot be decoded; failing it", "job", pe.ID, "error", pe)
	ctx, cancel := context.WithTimeout(a.reportCtx, 5*time.Minute)
	defer cancel()
	msg := fmt.Sprintf("ERROR: Job failed (system failure): Airlock could not read this job's payload: %v", pe.Err)
	if err := c.FailJob(ctx, pe.ID, pe.Token, gitlab.ReasonRunnerSystemFailure, msg); err != nil {
		log.Error("failing undecodable job", "job", pe.ID, "error", err)
	}
}
