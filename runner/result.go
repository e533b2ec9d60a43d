package runner

import (
	"errors"
	"time"

	"github.com/airlock-ci/airlock/netpolicy"
)

// State is how a job ended.
type State string

// Job end states.
const (
	Success State = "success"
	Failed  State = "failed"
	// Canceled: the job was cancelled (by a user, the coordinator or a
	// runner shutdown) before it finished.
	Canceled State = "canceled"
)

// FailureReason says why a job failed, with GitLab's vocabulary.
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
	Skipped  bool // its condition (when) did not hold
	ExitCode int  // -1 when it did not finish (cancelled, timed out, runner error)
	Duration time.Duration
	Err      error // runner error, timeout or cancel; nil for a plain exit code
}

// Result is how a job went.
type Result struct {
	State    State
	Reason   FailureReason // set when State is Failed
	ExitCode int           // the failing step's exit code; 0 on success
	Steps    []StepResult
	Duration time.Duration
	// Err explains a failure that is not a step's exit code: a refused
	// declaration, a runner failure, a timeout or a cancel.
	Err error
	// AuditTrail is the path of the job's sealed audit trail, when the
	// runner keeps one.
	AuditTrail string
	// Egress is what the job's gateway allowed and denied (nil when the
	// runner gives jobs no network).
	Egress *netpolicy.Summary
}

// Sentinel causes for cancelling a job's context.
var (
	// ErrCanceled cancels the running step; steps that run "always"
	// (after_script) still run. GitLab's Job-Status "canceling", Ctrl-C.
	ErrCanceled = errors.New("job canceled")
	// ErrAborted stops the job at once: no further step runs. GitLab's
	// "canceled"/"failed", a second Ctrl-C, runner shutdown timeout.
	ErrAborted = errors.New("job aborted")
	// ErrTimeout is the cause when the job's timeout expires.
	ErrTimeout = errors.New("job timed out")
)

// DeniedError is a job declaration the admin's policy does not allow: an
// ungranted secret or an egress entry outside the ceiling. Nothing of the
// job ran.
type DeniedError struct{ Err error }

func (e *DeniedError) Error() string { return e.Err.Error() }
func (e *DeniedError) Unwrap() error { return e.Err }
