package runner

import (
	"errors"
	"time"

	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
)

// The outcome vocabulary lives in runner/job so that coordinators report
// without importing runner; these names keep the runner's code short.
type (
	State         = job.State
	FailureReason = job.FailureReason
	StepResult    = job.StepResult
)

// Job end states and failure reasons (see package job).
const (
	Success             = job.Success
	Failed              = job.Failed
	Canceled            = job.Canceled
	ScriptFailure       = job.ScriptFailure
	RunnerSystemFailure = job.RunnerSystemFailure
	JobTimeout          = job.JobTimeout
	ImagePullFailure    = job.ImagePullFailure
	ConfigurationError  = job.ConfigurationError
	Unauthorized        = job.Unauthorized
)

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
	// Mask is the job's masker (case-insensitive for values a job may
	// have case-folded, as in host names): pass everything of the result
	// through it before printing it.
	Mask func(string) string
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
