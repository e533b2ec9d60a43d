package gitlab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// State is a job state the runner reports.
type State string

// Final states (and running, for keep-alive touches).
const (
	StateRunning State = "running"
	StateSuccess State = "success"
	StateFailed  State = "failed"
)

// FailureReason is GitLab's failure_reason of a failed job.
type FailureReason string

// Failure reasons a runner may report.
const (
	ReasonScriptFailure                   FailureReason = "script_failure"
	ReasonRunnerSystemFailure             FailureReason = "runner_system_failure"
	ReasonJobExecutionTimeout             FailureReason = "job_execution_timeout"
	ReasonImagePullFailure                FailureReason = "image_pull_failure"
	ReasonUnknownFailure                  FailureReason = "unknown_failure"
	ReasonRunnerConfigurationError        FailureReason = "runner_configuration_error"
	ReasonRunnerExternalDependencyFailure FailureReason = "runner_external_dependency_failure"
	ReasonRunnerInterrupted               FailureReason = "runner_interrupted"
)

// FinalState is what Finish reports.
type FinalState struct {
	State         State         // StateSuccess or StateFailed
	FailureReason FailureReason // for StateFailed; mapped to what the job accepts
	ExitCode      int           // the failing step's exit code, if any
}

const (
	maxFinalAttempts = 10 // failed final updates before giving up
	maxFinal202      = 60 // "trace still persisting" answers before giving up
	maxFinal412      = 3  // whole-trace resends before giving up
)

// AllowedFailureReason maps r to one the job accepts: script_failure,
// runner_system_failure and job_execution_timeout always; others only when
// listed in the job's features.failure_reasons; else unknown_failure.
func AllowedFailureReason(r FailureReason, accepted []string) FailureReason {
	switch r {
	case "":
		return ReasonUnknownFailure
	case ReasonScriptFailure, ReasonRunnerSystemFailure, ReasonJobExecutionTimeout:
		return r
	}
	for _, a := range accepted {
		if a == string(r) {
			return r
		}
	}
	return ReasonUnknownFailure
}

type output struct {
	Checksum string `json:"checksum"`
	Bytesize int64  `json:"bytesize"`
}

type updateBody struct {
	Token         string        `json:"token"`
	State         State         `json:"state"`
	FailureReason FailureReason `json:"failure_reason,omitempty"`
	ExitCode      *int          `json:"exit_code,omitempty"`
	Output        *output       `json:"output,omitempty"` // nil: GitLab's copy is not ours to vouch for
}

func (t *TraceWriter) update(ctx context.Context, op string, b updateBody) (*response, error) {
	b.Token = t.token
	if p := t.progress(); !p.Unverified {
		b.Output = &output{Checksum: fmt.Sprintf("crc32:%08x", p.CRC), Bytesize: p.Size}
	}
	r, err := t.c.do(ctx, call{op: op, method: http.MethodPut,
		url: t.c.endpoint(fmt.Sprintf("/jobs/%d", t.id)), body: b, jobToken: t.token})
	if err != nil {
		return nil, err
	}
	t.observe(r)
	return r, nil
}

// touch tells GitLab the job is alive (PUT state=running).
func (t *TraceWriter) touch(ctx context.Context) error {
	op := fmt.Sprintf("touching job %d", t.id)
	r, err := t.update(ctx, op, updateBody{State: StateRunning})
	if err != nil {
		return err
	}
	switch r.status {
	case http.StatusOK, http.StatusAccepted:
		return nil
	case http.StatusForbidden, http.StatusNotFound:
		t.jobGone(r.header.Get("Job-Status"))
		return &APIError{Op: op, Status: r.status, Err: ErrJobGone}
	}
	return unexpected(op, r)
}

// Finish sends the rest of the trace and reports the final state
// (PUT /jobs/:id). 202 (trace still persisting) waits the interval and
// repeats; 412 (checksum mismatch) resends the whole trace from 0; 403/404
// give an error wrapping ErrJobGone; other failures are retried up to ten
// times with back-off. The writer accepts no more output afterwards.
// Pass a context that outlives the job's own cancellation (for example
// context.WithTimeout(context.WithoutCancel(jobCtx), 5*time.Minute)): a
// canceled job must still be reported.
func (t *TraceWriter) Finish(ctx context.Context, fs FinalState) error {
	op := fmt.Sprintf("reporting final state of job %d", t.id)
	body := updateBody{State: fs.State}
	switch fs.State {
	case StateSuccess:
	case StateFailed:
		body.FailureReason = AllowedFailureReason(fs.FailureReason, t.opts.FailureReasons)
		if fs.ExitCode != 0 {
			code := fs.ExitCode
			body.ExitCode = &code
		}
	default:
		return fmt.Errorf("%s: state %q is not success or failed", op, fs.State)
	}
	t.s.Stop()
	t.mu.Lock()
	t.finishing = true
	t.mu.Unlock()

	bo := NewBackoff(time.Second, 30*time.Second)
	failures, n202, n412 := 0, 0, 0
	retry := func(err error) error {
		if failures++; failures >= maxFinalAttempts {
			return fmt.Errorf("%s: giving up after %d attempts: %w", op, failures, err)
		}
		d := bo.Next(err)
		t.log.Warn("final job update failed; retrying", "error", err, "wait", d)
		return t.c.sleep(ctx, d)
	}
	for {
		if err := t.Flush(ctx); err != nil {
			switch {
			case errors.Is(err, ErrJobGone):
				return fmt.Errorf("%s: %w", op, err)
			case errors.Is(err, ErrTraceTooLarge):
				// Report what GitLab holds.
			case IsRetryable(err):
				if rerr := retry(err); rerr != nil {
					return rerr
				}
				continue
			default:
				t.log.Warn("sending the rest of the job log failed; reporting the final state anyway", "error", err)
			}
		}
		r, err := t.update(ctx, op, body)
		if err != nil {
			if !IsRetryable(err) {
				return err
			}
			if rerr := retry(err); rerr != nil {
				return rerr
			}
			continue
		}
		switch r.status {
		case http.StatusOK:
			return nil
		case http.StatusAccepted:
			if n202++; n202 > maxFinal202 {
				return fmt.Errorf("%s: GitLab kept answering 202 (trace still persisting)", op)
			}
			if err := t.c.sleep(ctx, serverInterval(r, t.currentInterval())); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		case http.StatusPreconditionFailed:
			if n412++; n412 > maxFinal412 {
				return fmt.Errorf("%s: GitLab keeps refusing the trace checksum (412)", op)
			}
			t.log.Info("GitLab's copy of the job log differs; resending it from the start")
			t.s.Rewind(0)
		case http.StatusForbidden, http.StatusNotFound:
			t.mu.Lock()
			t.gone = true
			t.mu.Unlock()
			return &APIError{Op: op, Status: r.status, Err: ErrJobGone}
		default:
			err := unexpected(op, r)
			if !IsRetryable(err) {
				return err
			}
			if rerr := retry(err); rerr != nil {
				return rerr
			}
		}
	}
}

func (t *TraceWriter) currentInterval() time.Duration { return t.s.Interval() }

func serverInterval(r *response, def time.Duration) time.Duration {
	if v := r.header.Get("X-GitLab-Trace-Update-Interval"); v != "" {
		if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && s > 0 {
			return min(time.Duration(min(s, int64(maxServerWait/time.Second)))*time.Second, maxServerWait)
		}
	}
	return def
}

// FailJob fails a job the runner cannot run (for example a malformed
// payload): it writes message to the job log and reports the job failed
// with reason (mapped as by AllowedFailureReason with no job features).
// message must not contain secret values.
func (c *Client) FailJob(ctx context.Context, id int64, token string, reason FailureReason, message string) error {
	t := c.NewTraceWriter(id, token, TraceOptions{})
	if !strings.HasSuffix(message, "\n") {
		message += "\n"
	}
	if _, err := t.Write([]byte(message)); err != nil {
		return fmt.Errorf("failing job %d: %w", id, err)
	}
	if err := t.Finish(ctx, FinalState{State: StateFailed, FailureReason: reason}); err != nil {
		return fmt.Errorf("failing job %d: %w", id, err)
	}
	return nil
}
