package runner

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/backoff"
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
	// Coordinators are the job sources to serve (one request loop each,
	// or RequestConcurrency of them); their names must be unique.
	Coordinators []Coordinator
	// Concurrent bounds the jobs running at once over all coordinators
	// (default 1); each coordinator's Limit bounds its own.
	Concurrent int
	// CheckInterval is the pause between job requests that found no job
	// (default 3s).
	CheckInterval time.Duration
	// ShutdownTimeout is how long running jobs may go on once the agent
	// is told to stop; then they are aborted. 0 aborts them at once.
	ShutdownTimeout time.Duration
	// ReportTimeout bounds a job's report (audit upload, rest of the log,
	// final state), counted from when reporting starts (default 10m).
	ReportTimeout time.Duration
	// StateDir holds the journal of jobs in flight.
	StateDir string
	// DefaultImage runs jobs that name no image.
	DefaultImage string
	// Metrics, if set, counts rejected jobs. (Add it to the Runner's Hooks
	// too for job counts, and to the coordinators for API requests.)
	Metrics *Metrics
	// BackoffMin and BackoffMax bound the wait after a failed job request
	// (defaults 1s and 60s), with full jitter; a Retry-After hint of the
	// error (a RetryAfterDelay method) is honoured.
	BackoffMin, BackoffMax time.Duration
	// RecoverLocal, if set, cleans up what jobs of this runner left on the
	// host after a crash (credentials, containers, sandboxes) and returns
	// them (Runner.Recover). It runs once at start, before the crashed jobs
	// are reported to their coordinators with their sealed audit trails.
	RecoverLocal func(ctx context.Context) ([]Recovered, error)
	// Logger is the runner log (never job output).
	Logger hclog.Logger
}

// Agent serves coordinators: it asks them for jobs within the concurrency
// limits, runs each through a JobRunner with its log streamed to the
// coordinator, and has the coordinator report the outcome and upload the
// audit trail. Jobs in flight are journaled so that after a crash the next
// start reports them failed.
type Agent struct {
	cfg     AgentConfig
	runner  JobRunner
	log     hclog.Logger
	journal *agentJournal
	slots   chan struct{} // global concurrency
	coords  map[string]Coordinator

	// jobsCtx is the parent of every job's context; cancelling it aborts
	// every running job.
	jobsCtx   context.Context
	abortJobs context.CancelCauseFunc
	// reportCtx outlives jobs: the parent of every report's context.
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
	if len(cfg.Coordinators) == 0 {
		return nil, errors.New("creating agent: no job source configured (GitLab: run `airlock register` to add a [[runners]] entry)")
	}
	coords := map[string]Coordinator{}
	for _, c := range cfg.Coordinators {
		if coords[c.Name()] != nil {
			return nil, fmt.Errorf("creating agent: two job sources are named %q; give each [[runners]] entry its own name", c.Name())
		}
		coords[c.Name()] = c
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
	if cfg.ReportTimeout <= 0 {
		cfg.ReportTimeout = DefaultReportTimeout
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
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
		coords:  coords,
		abortCh: make(chan struct{}),
	}
	a.jobsCtx, a.abortJobs = context.WithCancelCause(context.Background())
	a.reportCtx, a.cancelReport = context.WithCancel(context.Background())
	cfg.Metrics.SetConcurrent(cfg.Concurrent)
	return a, nil
}

// DefaultReportTimeout bounds a job's report when AgentConfig.ReportTimeout
// is not set.
const DefaultReportTimeout = 10 * time.Minute

// Run reports jobs a crash left behind, then asks every coordinator for jobs
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
	for _, c := range a.cfg.Coordinators {
		limit := a.cfg.Concurrent
		if l := c.Limit(); l > 0 {
			limit = min(limit, l)
		}
		sem := make(chan struct{}, limit)
		loops := 1
		if cr, ok := c.(ConcurrentRequester); ok {
			loops = max(cr.RequestConcurrency(), 1)
		}
		for range loops {
			pollers.Add(1)
			go func() {
				defer pollers.Done()
				a.poll(pollCtx, c, sem)
			}()
		}
	}
	a.log.Info("agent started", "coordinators", len(a.cfg.Coordinators), "concurrent", a.cfg.Concurrent)

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

// poll requests jobs from one coordinator while a slot is free, until ctx
// ends. Each request holds a slot of the coordinator and a global one,
// which the job keeps; a request that finds no job gives them back at
// once, so that coordinators sharing the global limit take turns.
func (a *Agent) poll(ctx context.Context, c Coordinator, limit chan struct{}) {
	log := a.log.With("coordinator", c.Name())
	bo := newAgentBackoff(a.cfg.BackoffMin, a.cfg.BackoffMax)
	for {
		// A slot of this coordinator first, then a global one: never ask
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
		start := time.Now()
		// A request in flight when draining begins is not cancelled: the
		// coordinator may already have assigned it a job, which would then
		// be lost (stuck until it times out). It is answered (at once, or
		// when the long poll ends) and a job it brings is run as part of
		// the drain. Only an abort cancels it.
		lease, err := agentAcquireLease(a.jobsCtx, c)
		if err == nil && lease != nil {
			bo.reset()
			a.jobs.Add(1)
			go func() {
				defer a.jobs.Done()
				defer release()
				a.handle(c, lease)
			}()
			continue
		}
		release()
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		switch {
		case err == nil: // no job
			bo.reset()
			wait = a.cfg.CheckInterval - time.Since(start) // a long poll counts
		case errors.Is(err, job.ErrCoordinatorGone):
			log.Error("the job source no longer exists; no more jobs are requested from it", "error", err)
			return
		default:
			wait = bo.next(err)
			log.Warn("job request failed; backing off", "error", err, "wait", wait)
		}
		if wait > 0 && backoff.Sleep(ctx, wait) != nil {
			return
		}
	}
}

// agentAcquireLease asks c for a job, turning a panic of the coordinator
// into an error (backed off) instead of a crash of every job.
func agentAcquireLease(ctx context.Context, c Coordinator) (l Lease, err error) {
	defer func() {
		if p := recover(); p != nil {
			l, err = nil, fmt.Errorf("requesting a job: internal error in %s: %v\n%s", c.Name(), p, debug.Stack())
		}
	}()
	return c.Acquire(ctx)
}

// agentBackoff is a backoff.Backoff that honours the error's own wait
// (RetryAfterDelay), e.g. a coordinator's Retry-After.
type agentBackoff struct{ b *backoff.Backoff }

func newAgentBackoff(lo, hi time.Duration) *agentBackoff {
	return &agentBackoff{b: backoff.New(lo, hi)}
}

func (b *agentBackoff) next(err error) time.Duration {
	var hint interface{ RetryAfterDelay() time.Duration }
	if errors.As(err, &hint) {
		return b.b.Next(hint.RetryAfterDelay())
	}
	return b.b.Next(0)
}

func (b *agentBackoff) reset() { b.b.Reset() }

// agentAcquire takes a slot of sem, or returns false when ctx ends first.
func agentAcquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}
