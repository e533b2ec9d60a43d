package runner

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/airlock-ci/airlock/runner/gitlab"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets/mask"
)

const (
	// agentReportTimeout bounds the calls after a job (audit upload,
	// final state); Finish retries within it.
	agentReportTimeout = 10 * time.Minute
	// agentAuditArtifact is the name of the audit trail artifact.
	agentAuditArtifact = "airlock-audit.zip"
	// agentMaxAudit bounds the audit trail read into memory for upload.
	agentMaxAudit = 64 << 20
)

// handle runs one job GitLab handed out, from journal to final state.
func (a *Agent) handle(c *gitlab.Client, rc gitlab.RunnerConfig, resp *gitlab.JobResponse) {
	log := a.log.With("runner", rc.Name, "job", resp.ID)
	rec := agentJobRecord{Runner: rc.Name, URL: c.URL(), JobID: resp.ID, Token: resp.Token, Started: time.Now().UTC()}
	rctx, cancel := context.WithTimeout(a.reportCtx, agentReportTimeout)
	defer cancel()

	// A job that could not be journaled would be lost in a crash: refuse it.
	if err := a.journal.add(rec); err != nil {
		log.Error("journaling job failed; refusing it", "error", err)
		a.cfg.Metrics.JobRejected(string(gitlab.ReasonRunnerSystemFailure))
		if ferr := c.FailJob(rctx, resp.ID, resp.Token, gitlab.ReasonRunnerSystemFailure,
			"ERROR: Job failed (system failure): the runner could not record the job in its state directory"); ferr != nil {
			log.Error("failing job", "error", ferr)
		}
		return
	}
	keep := false // keep the record when the final state could not be reported
	defer func() {
		if keep {
			return
		}
		if err := a.journal.remove(rec.URL, rec.JobID); err != nil {
			log.Error("forgetting finished job", "error", err)
		}
	}()

	j, err := resp.ToJob()
	if err == nil && j.Image == "" {
		if j.Image = a.cfg.DefaultImage; j.Image == "" {
			err = errors.New("the job names no image and the runner has no default image ([docker] image)")
		}
	}
	if err != nil {
		log.Error("refusing job", "error", err)
		a.cfg.Metrics.JobRejected(string(gitlab.ReasonRunnerSystemFailure))
		msg := fmt.Sprintf("ERROR: Job failed (system failure): Airlock cannot run this job: %v", err)
		if ferr := c.FailJob(rctx, resp.ID, resp.Token, gitlab.ReasonRunnerSystemFailure, msg); ferr != nil {
			log.Error("failing job", "error", ferr)
			keep = !errors.Is(ferr, gitlab.ErrJobGone)
		}
		return
	}

	jobCtx, abort := context.WithCancelCause(a.jobsCtx)
	defer abort(nil)
	canceled := make(chan struct{})
	var cancelOnce sync.Once
	tw := c.NewTraceWriter(resp.ID, resp.Token, gitlab.TraceOptions{
		Interval:       a.cfg.TraceInterval,
		KeepAlive:      a.cfg.KeepAlive,
		FailureReasons: resp.Features.FailureReasons,
		Logger:         log,
		OnCancel: func() {
			cancelOnce.Do(func() { close(canceled) })
		},
		OnAbort: func(status string) {
			abort(fmt.Errorf("%w: GitLab says the job is %s", ErrAborted, status))
		},
	})
	tw.Start(a.reportCtx)
	// The runner masks too; this layer also covers the agent's own lines.
	out := mask.New(tw, resp.MaskPhrases()...)

	log.Info("running job", "project", j.Repo, "ref", j.Ref)
	res, runErr := agentRunSafely(jobCtx, a.runner, j, RunOptions{
		Out:       out,
		Cancel:    canceled,
		Mask:      resp.MaskPhrases(),
		Workspace: a.workspace(resp),
		// The trail is uploaded before Finish: wait until it is sealed.
		AwaitAudit: true,
	})
	if res == nil {
		res = &Result{State: Failed, Reason: RunnerSystemFailure, Err: errors.New("the runner returned no result")}
	}
	if runErr != nil {
		log.Error("cleaning up after job failed", "error", runErr)
		fmt.Fprintf(out, "WARNING: cleaning up after the job failed; the runner's administrator was told\n")
	}
	cause := context.Cause(jobCtx)
	fs := agentFinalState(res, cause)
	fmt.Fprintln(out, agentSummary(res, fs, cause))

	if res.AuditTrail != "" {
		if err := a.uploadAudit(rctx, c, resp, res.AuditTrail); err != nil {
			log.Error("uploading audit trail failed", "error", err)
			fmt.Fprintf(out, "WARNING: uploading the audit trail failed; it stays on the runner\n")
		}
	}
	if err := out.Close(); err != nil {
		log.Warn("flushing masked job log", "error", err)
	}
	if err := tw.Finish(rctx, fs); err != nil {
		if errors.Is(err, gitlab.ErrJobGone) {
			log.Info("GitLab no longer takes updates for the job", "status", fs.State)
			return
		}
		log.Error("reporting final state failed; it is retried on the next start", "error", err)
		keep = true
		return
	}
	log.Info("job finished", "state", fs.State, "failure_reason", fs.FailureReason, "duration", res.Duration)
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

// agentFinalState maps a Result to GitLab's final state.
func agentFinalState(res *Result, cause error) gitlab.FinalState {
	switch res.State {
	case Success:
		return gitlab.FinalState{State: gitlab.StateSuccess}
	case Failed:
		return gitlab.FinalState{State: gitlab.StateFailed, FailureReason: agentReason(res.Reason), ExitCode: res.ExitCode}
	}
	// Canceled: by GitLab (it ignores the state it receives now), or by
	// the runner's shutdown, which is the runner's failure.
	if errors.Is(cause, errShutdownTimeout) || errors.Is(cause, errAgentAbort) {
		return gitlab.FinalState{State: gitlab.StateFailed, FailureReason: gitlab.ReasonRunnerSystemFailure}
	}
	return gitlab.FinalState{State: gitlab.StateFailed, FailureReason: gitlab.ReasonUnknownFailure}
}

// agentReason maps the runner's failure reason to GitLab's; the trace
// writer reduces reasons the job does not accept to unknown_failure.
func agentReason(r FailureReason) gitlab.FailureReason {
	switch r {
	case "":
		return gitlab.ReasonUnknownFailure
	case Unauthorized:
		// A declared credential or egress the admin did not grant.
		return "unmet_prerequisites"
	}
	return gitlab.FailureReason(r)
}

// agentSummary is the job log's last line.
func agentSummary(res *Result, fs gitlab.FinalState, cause error) string {
	switch {
	case res.State == Success:
		return "Job succeeded"
	case res.State == Canceled && (errors.Is(cause, errShutdownTimeout) || errors.Is(cause, errAgentAbort)):
		return fmt.Sprintf("ERROR: Job failed (system failure): %v", cause)
	case res.State == Canceled:
		return "ERROR: Job canceled"
	case res.Reason == ScriptFailure:
		return fmt.Sprintf("ERROR: Job failed: exit code %d", res.ExitCode)
	case res.Err != nil:
		return fmt.Sprintf("ERROR: Job failed (%s): %v", fs.FailureReason, res.Err)
	}
	return fmt.Sprintf("ERROR: Job failed (%s)", fs.FailureReason)
}

// uploadAudit uploads the sealed audit trail as the job's zip artifact.
// It must run before Finish: the job token dies with the final state.
func (a *Agent) uploadAudit(ctx context.Context, c *gitlab.Client, resp *gitlab.JobResponse, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening audit trail: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("reading audit trail: %w", err)
	}
	hdr, err := zip.FileInfoHeader(fi)
	if err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	hdr.Name = "airlock-audit/" + filepath.Base(path)
	hdr.Method = zip.Deflate
	w, err := zw.CreateHeader(hdr)
	if err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	n, err := io.Copy(w, io.LimitReader(f, agentMaxAudit+1))
	if err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	if n > agentMaxAudit {
		return fmt.Errorf("zipping audit trail: larger than %d bytes", agentMaxAudit)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	return c.UploadArtifact(ctx, resp.ID, resp.Token, agentAuditArtifact, bytes.NewReader(buf.Bytes()),
		int64(buf.Len()), gitlab.ArtifactOptions{Type: "archive", Format: "zip"})
}

// agentCrashMessage is the job log line of a job a crash interrupted.
const agentCrashMessage = "ERROR: Job failed (system failure): the Airlock runner stopped unexpectedly " +
	"(crashed or was killed) while running this job. On restart it removed what the job left on the " +
	"host and revoked the job's credentials; its audit trail was sealed on the runner."

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
	recs, err := a.journal.list()
	if err != nil {
		a.log.Error("reading job journal", "error", err)
	}
	for _, r := range recs {
		a.recoverJob(ctx, r, trails[strconv.FormatInt(r.JobID, 10)])
	}
}

func (a *Agent) recoverJob(ctx context.Context, r agentJobRecord, trail string) {
	log := a.log.With("runner", r.Runner, "job", r.JobID)
	c, err := a.client(r.URL)
	if err != nil {
		log.Error("reporting crashed job: unusable coordinator URL", "error", err)
		return
	}
	// A drain does not abandon the report: it is what tells GitLab.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if trail != "" {
		resp := &gitlab.JobResponse{ID: r.JobID, Token: r.Token}
		if err := a.uploadAudit(rctx, c, resp, trail); err != nil {
			log.Error("uploading the audit trail of a crashed job failed; it stays on the runner", "error", err)
		}
	}
	err = c.FailJob(rctx, r.JobID, r.Token, gitlab.ReasonRunnerSystemFailure, agentCrashMessage)
	switch {
	case err == nil:
		log.Warn("reported a job the last run left unfinished as failed", "started", r.Started)
		a.cfg.Metrics.JobRejected(string(gitlab.ReasonRunnerSystemFailure))
	case errors.Is(err, gitlab.ErrJobGone):
		log.Info("a job the last run left unfinished is already over in GitLab")
	default:
		log.Error("reporting crashed job failed; retrying on the next start", "error", err)
		return
	}
	if err := a.journal.remove(r.URL, r.JobID); err != nil {
		log.Error("forgetting crashed job", "error", err)
	}
}
