package job

import (
	"context"
	"io"
)

// Coordinator is a job source the agent serves: one GitLab [[runners]]
// entry, one GitHub registration or JIT runner. It is the subset of a
// coordinator's protocol the agent needs (buildkite's core.APIClient idea);
// runner/gitlab and runner/github implement it; runner (which owns the
// agent loop and aliases these types) imports neither, and they need not
// import runner: the interfaces live in this leaf package so that a
// coordinator's Acquire can return a Lease.
//
// The agent calls Acquire from one goroutine per coordinator (or
// RequestConcurrency of them, see ConcurrentRequester), only while it has
// a free slot for the job that may come back; everything else may be
// called from any goroutine.
type Coordinator interface {
	// Name identifies the coordinator in logs, metrics and job ids
	// ("gitlab:NAME", "github:NAME"); unique within the agent and stable
	// across restarts: journal records name the coordinator that Resumes
	// them.
	Name() string
	// Limit bounds this coordinator's jobs at once (0: only the agent's
	// concurrent limit).
	Limit() int
	// Acquire asks for one job. It returns (nil, nil) when there is none
	// right now (the agent waits before asking again); an error is backed
	// off with jitter unless it wraps ErrCoordinatorGone, which stops this
	// coordinator for good (a deleted registration). A request in flight
	// when ctx ends may still return the lease it was given.
	Acquire(ctx context.Context) (Lease, error)
	// Resume rebuilds the lease of a job a crashed run journaled, from the
	// record Lease.Record returned then, so that the agent can report it
	// (Finish with a runner failure and the recovered trail).
	Resume(record []byte) (Lease, error)
}

// Lease is one job a coordinator handed out, from acceptance to its final
// report.
//
// Job is called first, then the agent journals Record. If Job failed, the
// agent calls Finish with a configuration failure (Outcome.Err says why)
// and never runs the job. Otherwise it calls Start, runs the job writing its (masked) log to
// Log, and calls Finish once with the outcome and the sealed audit trail.
type Lease interface {
	// Job returns the normalized job, with an ID unique across every
	// coordinator of the agent (e.g. "gitlab-NAME-1234").
	Job() (*Job, error)
	// Record is the lease's journal record: opaque to the agent, which
	// seals it on disk (it may hold the job token) until Finish succeeded.
	Record() []byte
	// Start begins streaming the log and watching the coordinator for
	// cancellation. cancel is called when the coordinator cancels the job
	// (steps that run always still run), abort when it must stop at once
	// (the job is gone or its lock was lost).
	Start(ctx context.Context, cancel func(), abort func(cause error))
	// Log receives the job's output, already masked by the runner.
	Log() io.Writer
	// Mask lists values only the coordinator knows that the job's output
	// must never show (the job token).
	Mask() []string
	// Workspace, when not nil, fills a fresh host directory with the job's
	// sources before the first step (a host-side checkout with the job
	// token, which never enters the job); see runner.RunOptions.Workspace.
	Workspace() func(ctx context.Context, dir string, out io.Writer) error
	// Finish reports the outcome, uploads the audit trail (trail is "" when
	// none was kept) and ends the lease; ctx bounds it, made when
	// reporting starts. An error wrapping ErrJobGone means the
	// coordinator no longer takes reports for the job (forget it); any
	// other error keeps the journal record so that the next start
	// reports again.
	Finish(ctx context.Context, o Outcome, trail string) error
}

// Optional capabilities, found by type assertion.

// ConcurrentRequester is a Coordinator that allows several Acquire calls
// in flight at once (GitLab's request_concurrency); the agent runs that
// many request loops, each holding a slot while it asks. Without it, one.
type ConcurrentRequester interface {
	RequestConcurrency() int
}

// JournalUpdater is a Lease whose journal record changes while the job
// runs (GitLab's acknowledged trace size, so that a report after a crash
// continues the log instead of rewriting it). The agent calls SetJournal
// before Start; update re-seals the record on disk and may be called from
// any goroutine until Finish returns.
type JournalUpdater interface {
	SetJournal(update func(record []byte) error)
}

// Summarizer is a Lease that words the job log's last line itself, in its
// coordinator's vocabulary (e.g. GitLab's "ERROR: Job failed
// (unmet_prerequisites)"). The agent writes it through the masker before
// Finish; without it the agent writes a line of its own.
type Summarizer interface {
	Summary(o Outcome) string
}

// OrphanResumer is a Coordinator that can also report jobs journaled
// under another name of its kind whose coordinator is no longer served
// (a just-in-time runner's job: its one-job coordinator is gone after a
// crash, but the record's job token still reports it). The agent asks it
// when no coordinator of the record's name exists.
type OrphanResumer interface {
	ResumesFor(name string) bool
}

// Collector is a Lease whose coordinator takes files from the job's
// workspace after its steps and delivers them before the final report
// (GitLab's caches and artifacts). The agent passes Collect as
// runner.RunOptions.Collect (it runs while the job's container exists;
// fetch copies a working-directory path out to the host), then calls
// Deliver once the job is torn down and its audit trail sealed, before the
// summary line and Finish. Deliver writes to out (the job log, masked) and
// may turn a success into a failure (an upload GitLab refused) by changing
// o; a trail it delivered is not uploaded again by Finish.
type Collector interface {
	Collect(ctx context.Context, state State, fetch func(ctx context.Context, rel, dst string) error, out io.Writer) error
	Deliver(ctx context.Context, o *Outcome, trail string, out io.Writer)
}
