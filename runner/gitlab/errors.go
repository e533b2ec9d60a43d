package gitlab

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors; APIError unwraps to them where the status has a meaning.
var (
	// ErrTokenInvalid: GitLab refused the runner token (403). Re-register
	// or create a new runner token.
	ErrTokenInvalid = errors.New("runner token is invalid, expired or revoked")
	// ErrRunnerOrphaned: the runner's owning project or group is gone (422).
	ErrRunnerOrphaned = errors.New("runner is orphaned: its project or group no longer exists")
	// ErrRegistrationDisabled: the instance no longer accepts registration
	// tokens (410).
	ErrRegistrationDisabled = errors.New("registration tokens are disabled on this GitLab instance: " +
		"create a runner in GitLab (Settings > CI/CD > Runners > New runner) and use its glrt- authentication token")
	// ErrJobGone: the job no longer accepts updates (403/404 with its job
	// token, or a final Job-Status). Stop working on it.
	ErrJobGone = errors.New("job no longer exists or no longer accepts updates")
	// ErrTraceTooLarge: GitLab refused more trace (403 on PATCH trace).
	ErrTraceTooLarge = errors.New("job log exceeds GitLab's size limit; further output is not sent")
)

// APIError is a failed API call. Its message never contains a token.
type APIError struct {
	Op         string        // what was being done, e.g. "requesting job"
	Status     int           // HTTP status; 0 when no response arrived
	Message    string        // GitLab's message, bounded and sanitized
	RetryAfter time.Duration // server's Retry-After/RateLimit-ResetTime hint; 0 if none
	Err        error         // sentinel or transport error

	retryable bool
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": GitLab answered %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.Message != "" {
		fmt.Fprintf(&b, " (%q)", e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, "; retry after %s", e.RetryAfter)
	}
	return b.String()
}

func (e *APIError) Unwrap() error { return e.Err }

// Retryable reports whether the same request may succeed later
// (transport failures, 408, 429, 5xx).
func (e *APIError) Retryable() bool { return e.retryable }

// IsRetryable reports whether err is an APIError worth retrying.
func IsRetryable(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Retryable()
}

func retryableStatus(s int) bool {
	switch s {
	case http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// maxServerWait caps a server's wait hint so that a hostile or broken
// server cannot park the runner for days.
const maxServerWait = 15 * time.Minute

// retryAfter reads Retry-After (seconds or HTTP date) or
// RateLimit-ResetTime (HTTP date) and returns the wait, capped.
func retryAfter(h http.Header, now time.Time) time.Duration {
	d := time.Duration(0)
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if s, err := strconv.ParseInt(v, 10, 64); err == nil {
			if s > 0 {
				d = time.Duration(min(s, int64(maxServerWait/time.Second))) * time.Second
			}
		} else if t, err := http.ParseTime(v); err == nil {
			d = t.Sub(now)
		}
	}
	if d <= 0 {
		if v := strings.TrimSpace(h.Get("RateLimit-ResetTime")); v != "" {
			if t, err := http.ParseTime(v); err == nil {
				d = t.Sub(now)
			}
		}
	}
	if d < 0 {
		d = 0
	}
	return min(d, maxServerWait)
}

// RetryAfterDelay is the server's Retry-After hint (0 if none), for
// back-off loops outside this package.
func (e *APIError) RetryAfterDelay() time.Duration { return e.RetryAfter }
