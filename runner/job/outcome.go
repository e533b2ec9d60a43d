package job

import (
	"errors"
	"time"
)

// State is how a job ended. Coordinators map it to their own vocabulary
// (GitLab's success/failed, GitHub's Succeeded/Failed/Canceled).
type State string

// Job end states.
const (
	Success State = "success"
	Failed  State = "failed"
	// Canceled: the job was cancelled (by a user, the coordinator or a
	// runner shutdown) before it finished.
	Canceled State = "canceled"
)

// FailureReason says why a job failed, with GitLab's vocabulary (the
// richest of the coordinators'; others reduce it).
type FailureReason string

// Failure reasons.
const (
	ScriptFailure       FailureReason = "script_failure"
	RunnerSystemFailure FailureReason = "runner_system_failure"
	JobTimeout          FailureReason = "job_execution_timeout"
	ImagePullFailure    FailureReason = "image_pull_failure"
	ConfigurationError  FailureReason = "runner_configuration_error"
	Unauthorized        FailureReason = "unauthorized" // a declared credential or egress is not granted
)

// StepResult is what one step did.
type StepResult struct {
	Name     string
	Skipped  bool // its condition (when / if) did not hold
	ExitCode int  // -1 when it did not finish (cancelled, timed out, runner error)
	Duration time.Duration
	Err      error // runner error, timeout or cancel; nil for a plain exit code
}

// Outcome is how a job went, as a coordinator reports it.
type Outcome struct {
	State    State
	Reason   FailureReason // set when State is Failed
	ExitCode int           // the failing step's exit code; 0 on success
	Steps    []StepResult
	Duration time.Duration
	// Err explains a failure that is not a step's exit code: a refused
	// declaration, a runner failure, a timeout or a cancel.
	Err error
	// Aborted is set when the runner itself stopped the job (shutdown
	// timeout, abort): the runner's failure, not the job's.
	Aborted bool
	// Summary is the job log's last line as the agent wrote it.
	Summary string
}

// Errors a coordinator wraps to steer the agent (see runner.Coordinator).
var (
	// ErrCoordinatorGone: the registration no longer exists (deleted,
	// token revoked); the agent stops serving that coordinator.
	ErrCoordinatorGone = errors.New("coordinator registration is gone")
	// ErrJobGone: the coordinator no longer takes reports for the job.
	ErrJobGone = errors.New("coordinator no longer knows the job")
)

// ReasonError is an error that says which failure reason the job ends
// with (a stage before the script that failed for a reason of its own,
// e.g. a dependency's artifacts that cannot be downloaded).
type ReasonError struct {
	Reason FailureReason
	Err    error
}

func (e *ReasonError) Error() string { return e.Err.Error() }
func (e *ReasonError) Unwrap() error { return e.Err }
