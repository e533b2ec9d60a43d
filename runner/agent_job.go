package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets/mask"
)

// handle runs one job a coordinator handed out, from journal to report.
func (a *Agent) handle(c Coordinator, lease Lease) {
	log := a.log.With("coordinator", c.Name())
	j, jobErr := agentLeaseJob(lease)
	if jobErr == nil && j.Image == "" {
		if j.Image = a.cfg.DefaultImage; j.Image == "" {
			jobErr = errors.New("the job names no image and the runner has no default image ([docker] image)")
		}
	}
	jobID := ""
	if j != nil {
		jobID = j.ID
		log = log.With("job", j.ID)
	}

	// A job that could not be journaled would be lost in a crash: refuse it.
	rec := agentJobRecord{Coordinator: c.Name(), JobID: jobID, Lease: lease.Record(), Started: time.Now().UTC()}
	name, err := a.journal.add(rec)
	if err != nil {
		log.Error("journaling job failed; refusing it", "error", err)
		a.cfg.Metrics.JobRejected(string(RunnerSystemFailure))
		a.report(log, lease, job.Outcome{State: Failed, Reason: RunnerSystemFailure,
			Err: errors.New("the runner could not record the job in its state directory")}, "")
		return
	}
	if ju, ok := lease.(JournalUpdater); ok {
		ju.SetJournal(func(record []byte) error {
			r := rec
			r.Lease = record
			return a.journal.update(name, r)
		})
	}
	forget := func() {
		if err := a.journal.remove(name); err != nil {
			log.Error("forgetting finished job", "error", err)
		}
	}

	if jobErr != nil {
		log.Error("refusing job", "error", jobErr)
		a.cfg.Metrics.JobRejected(string(RunnerSystemFailure))
		if a.report(log, lease, job.Outcome{State: Failed, Reason: ConfigurationError, Err: jobErr}, "") {
			forget()
		}
		return
	}

	jobCtx, abort := context.WithCancelCause(a.jobsCtx)
	defer abort(nil)
	canceled := make(chan struct{})
	var cancelOnce sync.Once
	lease.Start(a.reportCtx,
		func() { cancelOnce.Do(func() { close(canceled) }) },
		func(cause error) { abort(fmt.Errorf("%w: %w", ErrAborted, cause)) })
	// The runner masks too; this layer also covers the agent's own lines.
	out := mask.New(lease.Log(), lease.Mask()...)

	log.Info("running job", "project", j.Repo, "ref", j.Ref)
	var driver StepDriver
	if d, ok := lease.(job.Driven); ok {
		driver = d.StepDriver()
	}
	collector, _ := lease.(Collector)
	var collect func(ctx context.Context, state job.State, fetch func(ctx context.Context, rel, dst string) error, out io.Writer) error
	if collector != nil {
		collect = collector.Collect
	}
	var resolve func(ctx context.Context, log io.Writer) ([]job.Variable, []job.SecretRead, func(context.Context) error, error)
	if sr, ok := lease.(job.SecretResolver); ok {
		resolve = sr.ResolveSecrets
	}
	res, runErr := agentRunSafely(jobCtx, a.runner, j, RunOptions{
		ResolveSecrets: resolve,
		Out:            out,
		Cancel:         canceled,
		Mask:           lease.Mask(),
		Workspace:      lease.Workspace(),
		Collect:        collect,
		Driver:         driver,
		// The trail is uploaded before the final state: wait until it is
		// sealed.
		AwaitAudit: true,
	})
	if res == nil {
		res = &Result{State: Failed, Reason: RunnerSystemFailure, Err: errors.New("the runner returned no result")}
	}
	if runErr != nil {
		log.Error("cleaning up after job failed", "error", runErr)
		fmt.Fprintf(out, "WARNING: cleaning up after the job failed; the runner's administrator was told\n")
	}
	o := agentOutcome(res, context.Cause(jobCtx))
	if collector != nil {
		// Artifacts go up before the summary: a refused upload fails the job.
		dctx, cancel := context.WithTimeout(a.reportCtx, a.cfg.ReportTimeout)
		collector.Deliver(dctx, &o, res.AuditTrail, out)
		cancel()
		o.Summary = agentSummary(o)
	}
	if s, ok := lease.(Summarizer); ok {
		o.Summary = s.Summary(o)
	}
	fmt.Fprintln(out, o.Summary)
	if err := out.Close(); err != nil {
		log.Warn("flushing masked job log", "error", err)
	}
	if a.report(log, lease, o, res.AuditTrail) {
		forget()
	}
	log.Info("job finished", "state", o.State, "failure_reason", o.Reason, "duration", res.Duration)
}

// report has the lease report o, on a context made now (a long job does
// not eat into it) and bounded by the report timeout. It returns whether
// the journal record can go: the report was taken, or the coordinator no
// longer knows the job.
func (a *Agent) report(log hclog.Logger, lease Lease, o job.Outcome, trail string) bool {
	ctx, cancel := context.WithTimeout(a.reportCtx, a.cfg.ReportTimeout)
	defer cancel()
	err := agentFinishSafely(ctx, lease, o, trail)
	switch {
	case err == nil:
		return true
	case errors.Is(err, job.ErrJobGone):
		log.Info("the coordinator no longer takes reports for the job", "state", o.State)
		return true
	}
	log.Error("reporting the job failed; it is retried on the next start", "error", err)
	return false
}

// agentOutcome is how a job went, for its coordinator. A job the runner
// stopped (shutdown timeout, abort) is the runner's failure.
func agentOutcome(res *Result, cause error) job.Outcome {
	o := job.Outcome{State: res.State, Reason: res.Reason, ExitCode: res.ExitCode, Steps: res.Steps,
		Duration: res.Duration, Err: res.Err}
	if res.State == Canceled && (errors.Is(cause, errShutdownTimeout) || errors.Is(cause, errAgentAbort)) {
		o.Aborted = true
		o.Err = cause
	}
	o.Summary = agentSummary(o)
	return o
}

// agentSummary is the job log's last line when the lease does not word it.
func agentSummary(o job.Outcome) string {
	switch {
	case o.State == Success:
		return "Job succeeded"
	case o.Aborted:
		return fmt.Sprintf("ERROR: Job failed (system failure): %v", o.Err)
	case o.State == Canceled:
		return "ERROR: Job canceled"
	case o.Reason == ScriptFailure:
		return fmt.Sprintf("ERROR: Job failed: exit code %d", o.ExitCode)
	case o.Err != nil:
		return fmt.Sprintf("ERROR: Job failed (%s): %v", o.Reason, o.Err)
	}
	return fmt.Sprintf("ERROR: Job failed (%s)", o.Reason)
}

// agentRunSafely runs the job, turning a panic of the runner into a
// runner failure of this job (the runner's deferred teardown has run by
// then) instead of a crash of every job the agent runs.
func agentRunSafely(ctx context.Context, r JobRunner, j *job.Job, o RunOptions) (res *Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			res = &Result{State: Failed, Reason: RunnerSystemFailure,
				Err: fmt.Errorf("internal error in the runner: %v", p)}
			err = fmt.Errorf("running job %s: panic: %v\n%s", j.ID, p, debug.Stack())
		}
	}()
	return r.Run(ctx, j, o)
}

// agentLeaseJob is lease.Job with a panic of the coordinator's conversion
// turned into a refusal of the job.
func agentLeaseJob(lease Lease) (j *job.Job, err error) {
	defer func() {
		if p := recover(); p != nil {
			j, err = nil, fmt.Errorf("internal error reading the job: %v", p)
		}
	}()
	j, err = lease.Job()
	if err == nil && j == nil {
		err = errors.New("the job source returned no job")
	}
	return j, err
}

// agentFinishSafely is lease.Finish with a panic turned into an error (the
// record is kept and the report retried on the next start).
func agentFinishSafely(ctx context.Context, lease Lease, o job.Outcome, trail string) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("reporting the job: internal error: %v\n%s", p, debug.Stack())
		}
	}()
	return lease.Finish(ctx, o, trail)
}

// agentRecoverTimeout bounds the report of one job a crash interrupted.
const agentRecoverTimeout = 2 * time.Minute

// errAgentCrashed explains the failure of a job a crash interrupted.
var errAgentCrashed = errors.New("the Airlock runner stopped unexpectedly " +
	"(crashed or was killed) while running this job. On restart it removed what the job left on the " +
	"host and revoked the job's credentials; its audit trail was sealed on the runner")

// recover cleans up after jobs a crash interrupted and reports them failed.
func (a *Agent) recover(ctx context.Context) {
	trails := map[string]string{}
	if a.cfg.RecoverLocal != nil {
		recovered, err := a.cfg.RecoverLocal(ctx)
		if err != nil {
			a.log.Error("cleaning up after crashed jobs", "error", err)
		}
		for _, r := range recovered {
			trails[r.JobID] = r.Trail
		}
		if len(recovered) > 0 {
			a.log.Warn("cleaned up jobs a crash interrupted", "jobs", len(recovered))
		}
	}
	if err := a.journal.sweepTemps(); err != nil {
		a.log.Warn("removing the job journal's interrupted writes", "error", err)
	}
	recs, err := a.journal.list()
	if err != nil {
		a.log.Error("reading job journal", "error", err)
	}
	for _, r := range recs {
		a.recoverJob(ctx, r, trails[r.JobID])
	}
}

func (a *Agent) recoverJob(ctx context.Context, r agentJournalEntry, trail string) {
	log := a.log.With("coordinator", r.Coordinator, "job", r.JobID)
	c := a.coords[r.Coordinator]
	if c == nil {
		for _, co := range a.cfg.Coordinators {
			if or, ok := co.(job.OrphanResumer); ok && or.ResumesFor(r.Coordinator) {
				c = co
				log = log.With("reported_by", co.Name())
				break
			}
		}
	}
	if c == nil {
		log.Error("a job the last run left unfinished is of a job source no longer configured; its record stays in the journal", "started", r.Started)
		return
	}
	lease, err := c.Resume(r.Lease)
	if err != nil {
		log.Error("reporting crashed job: unreadable record", "error", err)
		return
	}
	// A drain does not abandon the report: it is what tells the
	// coordinator. Bounded tighter than a job's report: recovery runs
	// before any job is requested.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(a.cfg.ReportTimeout, agentRecoverTimeout))
	defer cancel()
	o := job.Outcome{State: Failed, Reason: RunnerSystemFailure, Aborted: true, Err: errAgentCrashed}
	err = agentFinishSafely(rctx, lease, o, trail)
	switch {
	case err == nil:
		log.Warn("reported a job the last run left unfinished as failed", "started", r.Started)
		a.cfg.Metrics.JobRejected(string(RunnerSystemFailure))
	case errors.Is(err, job.ErrJobGone):
		log.Info("a job the last run left unfinished is already over at its coordinator")
	default:
		log.Error("reporting crashed job failed; retrying on the next start", "error", err)
		return
	}
	if err := a.journal.remove(r.name); err != nil {
		log.Error("forgetting crashed job", "error", err)
	}
}
