package gitlab

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/checkout"
	"github.com/airlock-ci/airlock/runner/job"
)

const (
	// AuditArtifact is the name of the audit trail artifact.
	AuditArtifact = "airlock-audit.zip"
	// maxAudit bounds the audit trail read into memory for upload.
	maxAudit = 64 << 20
)

// Lease is one GitLab job from acceptance to its final report
// (job.Lease): its trace is a TraceWriter, its audit trail is uploaded as
// the airlock-audit.zip artifact, and its final state is PUT.
type Lease struct {
	co      *Coordinator
	resp    *JobResponse
	readErr error // the payload could not be read
	log     hclog.Logger
	// cloneDir is GIT_CLONE_PATH's directory ("": the runner's work
	// directory), cloneErr why it is refused.
	cloneDir string
	cloneErr error
	tw       *TraceWriter
	resumed  bool // rebuilt from a crashed run's journal

	jobOnce sync.Once
	j       *job.Job
	jobErr  error

	pl        *Pipeline // caches, dependencies and artifacts
	trailSent bool      // Deliver uploaded the trail
	mu        sync.Mutex
	rec       leaseRecord
	journal   func([]byte) error
	started   bool
	cancel    func()
	abort     func(error)
}

var (
	_ job.Lease          = (*Lease)(nil)
	_ job.JournalUpdater = (*Lease)(nil)
	_ job.Summarizer     = (*Lease)(nil)
	_ job.Collector      = (*Lease)(nil)
	_ job.SecretResolver = (*Lease)(nil)
)

func (c *Coordinator) newLease(resp *JobResponse, readErr error, rec leaseRecord, resumed bool) *Lease {
	rec.URL, rec.JobID, rec.Token = c.c.URL(), resp.ID, resp.Token
	l := &Lease{co: c, resp: resp, readErr: readErr, rec: rec, resumed: resumed, log: c.log.With("job", resp.ID)}
	workDir := c.cfg.WorkDir
	if workDir == "" {
		workDir = "/builds"
	}
	projectDir := workDir
	if l.cloneDir, l.cloneErr = resp.CloneDir(workDir); l.cloneDir != "" {
		projectDir = l.cloneDir
	}
	l.pl = NewPipeline(c.c, resp, PipelineOptions{ProjectDir: projectDir, Cache: c.cfg.Cache, TempDir: c.cfg.TempDir, Log: l.log})
	l.tw = c.c.NewTraceWriter(resp.ID, resp.Token, TraceOptions{
		Interval:       c.cfg.TraceInterval,
		KeepAlive:      c.cfg.KeepAlive,
		Limit:          int64(c.cfg.Runner.OutputLimit) << 10, // KiB; 0: the default
		FailureReasons: resp.Features.FailureReasons,
		Logger:         c.log,
		Resume:         rec.Trace,
		Resumed:        resumed,
		OnProgress:     l.progress,
		OnCancel: func() {
			l.mu.Lock()
			cancel := l.cancel
			l.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		},
		OnAbort: func(status string) {
			l.mu.Lock()
			abort := l.abort
			l.mu.Unlock()
			if abort != nil {
				abort(fmt.Errorf("GitLab says the job is %s", status))
			}
		},
	})
	return l
}

// Job converts the payload (once). The job's ID is unique across GitLab
// instances (JobID); GitLab's own id is kept in CoordinatorID.
func (l *Lease) Job() (*job.Job, error) {
	l.jobOnce.Do(func() {
		if l.readErr != nil {
			l.jobErr = l.readErr
			return
		}
		j, err := l.resp.ToJob()
		if err = errors.Join(err, l.cloneErr); err != nil {
			l.jobErr = err
			return
		}
		j.WorkDir = l.cloneDir
		j.ID = JobID(l.co.c.URL(), l.resp.ID)
		j.CoordinatorID = strconv.FormatInt(l.resp.ID, 10)
		j.Instance = l.co.c.URL()
		l.j = j
	})
	return l.j, l.jobErr
}

// Record is the journal record: instance, job id, job token and how much
// of the trace GitLab acknowledged.
func (l *Lease) Record() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := json.Marshal(l.rec)
	if err != nil {
		panic(err) // plain strings and numbers
	}
	return b
}

// SetJournal makes every acknowledged trace send update the journal
// record, so that a report after a crash continues the trace.
func (l *Lease) SetJournal(update func(record []byte) error) {
	l.mu.Lock()
	l.journal = update
	l.mu.Unlock()
}

// progress journals the acknowledged trace size (in the sender's
// goroutine).
func (l *Lease) progress(p TraceProgress) {
	l.mu.Lock()
	l.rec.Trace = p
	update := l.journal
	l.mu.Unlock()
	if update == nil {
		return
	}
	if err := update(l.Record()); err != nil {
		l.log.Warn("journaling the job's trace progress failed", "error", err)
	}
}

// Start streams the trace and watches Job-Status for cancellation.
func (l *Lease) Start(ctx context.Context, cancel func(), abort func(cause error)) {
	l.mu.Lock()
	l.started = true
	l.cancel, l.abort = cancel, abort
	l.mu.Unlock()
	l.tw.Start(ctx)
}

// Log is the job's trace.
func (l *Lease) Log() io.Writer { return l.tw }

// Mask lists the job token and what else GitLab marks secret.
func (l *Lease) Mask() []string { return l.resp.MaskPhrases() }

// Workspace fills the job's workspace on the host: a clone with the job
// token (none with GIT_STRATEGY: none), then the caches and the
// dependencies' artifacts (Pipeline.Workspace); nil when there is nothing
// to do.
func (l *Lease) Workspace() func(ctx context.Context, dir string, out io.Writer) error {
	return l.pl.Workspace(l.checkout())
}

// Collect archives the caches and builds the artifacts due after the
// job's steps (Pipeline.Collect).
func (l *Lease) Collect(ctx context.Context, state job.State, fetch func(ctx context.Context, rel, dst string) error, out io.Writer) error {
	return l.pl.Collect(ctx, state, fetch, out)
}

// Deliver uploads the artifacts with the sealed audit trail in the job's
// archive (or alone), before the final state: a failed upload fails an
// otherwise successful job, as in gitlab-runner.
func (l *Lease) Deliver(ctx context.Context, o *job.Outcome, trail string, out io.Writer) {
	err, warn := l.pl.Upload(ctx, trail, out)
	l.mu.Lock()
	l.trailSent = trail != ""
	l.mu.Unlock()
	if warn != nil {
		l.log.Error("uploading audit trail failed", "error", warn)
		fmt.Fprintf(out, "WARNING: uploading the audit trail failed; it stays on the runner\n")
	}
	if err == nil {
		return
	}
	l.log.Warn("uploading artifacts failed", "error", err)
	if o.State == job.Success {
		// As gitlab-runner's uploader, which exits 1.
		o.State, o.Reason, o.ExitCode, o.Err = job.Failed, job.ScriptFailure, 1, fmt.Errorf("uploading artifacts: %w", err)
	}
}

// ResolveSecrets resolves the job's secrets: from Vault (none: nothing).
func (l *Lease) ResolveSecrets(ctx context.Context, log io.Writer) ([]job.Variable, []job.SecretRead, func(context.Context) error, error) {
	if len(l.resp.Secrets) == 0 {
		return nil, nil, nil, nil
	}
	return l.pl.ResolveSecrets(ctx, SecretsOptions{VaultServers: l.co.cfg.VaultServers, HTTPClient: l.co.cfg.VaultHTTPClient, JobLog: log})
}

// checkout is a host-side clone with the job token, or nil when the job
// wants no sources (GIT_STRATEGY: none).
func (l *Lease) checkout() func(ctx context.Context, dir string, out io.Writer) error {
	spec, ok := l.resp.CheckoutSpec(l.co.cfg.GitCacheDir)
	if !ok {
		return nil
	}
	spec.Git = l.co.cfg.Git
	attempts := l.resp.attempts("GET_SOURCES_ATTEMPTS", 1)
	return func(ctx context.Context, dir string, out io.Writer) error {
		var err error
		for i := 1; i <= attempts; i++ {
			if i > 1 {
				fmt.Fprintf(out, "Fetching the sources failed: %v\nRetrying (attempt %d of %d, GET_SOURCES_ATTEMPTS)\n", err, i, attempts)
				if err := emptyDir(dir); err != nil {
					return err
				}
			}
			if err = checkout.Run(ctx, spec, dir, out); err == nil || ctx.Err() != nil {
				return err
			}
		}
		return err
	}
}

// emptyDir removes what is in dir, keeping dir.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// FinalStateOf maps an outcome to GitLab's final state.
func FinalStateOf(o job.Outcome) FinalState {
	switch o.State {
	case job.Success:
		return FinalState{State: StateSuccess}
	case job.Failed:
		return FinalState{State: StateFailed, FailureReason: reasonOf(o.Reason), ExitCode: o.ExitCode}
	}
	// Canceled: by GitLab (it ignores the state it receives now), or by
	// the runner's shutdown, which is the runner's failure.
	if o.Aborted {
		return FinalState{State: StateFailed, FailureReason: ReasonRunnerSystemFailure}
	}
	return FinalState{State: StateFailed, FailureReason: ReasonUnknownFailure}
}

// reasonOf maps the runner's failure reason to GitLab's; the trace writer
// reduces reasons the job does not accept to unknown_failure.
func reasonOf(r job.FailureReason) FailureReason {
	switch r {
	case "":
		return ReasonUnknownFailure
	case job.Unauthorized:
		// A declared credential or egress the admin did not grant.
		return "unmet_prerequisites"
	}
	return FailureReason(r)
}

// Summary is the job log's last line, in gitlab-runner's words.
func (l *Lease) Summary(o job.Outcome) string {
	fs := FinalStateOf(o)
	switch {
	case o.State == job.Success:
		return "Job succeeded"
	case o.State == job.Canceled && o.Aborted && o.Err != nil:
		return fmt.Sprintf("ERROR: Job failed (system failure): %v", o.Err)
	case o.State == job.Canceled:
		return "ERROR: Job canceled"
	case o.Reason == job.ScriptFailure:
		return fmt.Sprintf("ERROR: Job failed: exit code %d", o.ExitCode)
	case o.Err != nil:
		return fmt.Sprintf("ERROR: Job failed (%s): %v", fs.FailureReason, o.Err)
	}
	return fmt.Sprintf("ERROR: Job failed (%s)", fs.FailureReason)
}

// Finish uploads the audit trail (before the final state: the job token
// dies with it) and reports the final state. A job that never started (its
// payload was refused, or it could not be journaled) is failed with a
// system failure naming o.Err. A resumed job (Resume) gets o.Err appended
// to the trace GitLab holds.
func (l *Lease) Finish(ctx context.Context, o job.Outcome, trail string) error {
	l.mu.Lock()
	started, sent := l.started, l.trailSent
	l.mu.Unlock()
	defer func() {
		if err := l.pl.Close(); err != nil {
			l.log.Warn("removing artifact files", "error", err)
		}
	}()
	if trail != "" && !sent {
		if err := l.uploadAudit(ctx, trail); err != nil {
			l.log.Error("uploading audit trail failed", "error", err)
			if started {
				fmt.Fprintf(l.tw, "WARNING: uploading the audit trail failed; it stays on the runner\n")
			}
		}
	}
	fs := FinalStateOf(o)
	if !started {
		msg := "the runner could not run it"
		if o.Err != nil {
			msg = o.Err.Error()
		}
		if l.resumed {
			sep := "\n"
			if l.rec.Trace.Size == 0 {
				sep = ""
			}
			fmt.Fprintf(l.tw, "%sERROR: Job failed (system failure): %s\n", sep, msg)
		} else {
			fmt.Fprintf(l.tw, "ERROR: Job failed (system failure): Airlock cannot run this job: %s\n", msg)
		}
		fs = FinalState{State: StateFailed, FailureReason: ReasonRunnerSystemFailure}
	}
	err := l.tw.Finish(ctx, fs)
	if err != nil && l.resumed && !errors.Is(err, ErrJobGone) {
		// GitLab's copy does not match the journaled progress (a crash
		// between a send and its journal record): fail the job with a
		// trace of its own rather than never.
		l.log.Warn("continuing the trace of a crashed job failed; rewriting it", "error", err)
		msg := "the runner stopped unexpectedly"
		if o.Err != nil {
			msg = o.Err.Error()
		}
		err = l.co.c.FailJob(ctx, l.resp.ID, l.resp.Token, ReasonRunnerSystemFailure, "ERROR: Job failed (system failure): "+msg)
	}
	if errors.Is(err, ErrJobGone) {
		return fmt.Errorf("%w: %w", job.ErrJobGone, err)
	}
	return err
}

// uploadAudit uploads the sealed audit trail as the job's zip artifact.
func (l *Lease) uploadAudit(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening audit trail: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("reading audit trail: %w", err)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	hdr, err := zip.FileInfoHeader(fi)
	if err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	hdr.Name = AuditEntry
	hdr.Method = zip.Deflate
	w, err := zw.CreateHeader(hdr)
	if err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	n, err := io.Copy(w, io.LimitReader(f, maxAudit+1))
	if err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	if n > maxAudit {
		return fmt.Errorf("zipping audit trail: larger than %d bytes", maxAudit)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("zipping audit trail: %w", err)
	}
	return l.co.c.UploadArtifact(ctx, l.resp.ID, l.resp.Token, AuditArtifact, bytes.NewReader(buf.Bytes()),
		int64(buf.Len()), ArtifactOptions{Type: "archive", Format: "zip"})
}
