package gitlab

import (
	"errors"
	"time"

	"github.com/airlock-ci/airlock/internal/backoff"
)

// Backoff is a backoff.Backoff that honours the wait a GitLab error asks
// for (Retry-After, RateLimit-ResetTime). Not safe for concurrent use; one
// per retry loop.
type Backoff struct {
	backoff.Backoff
}

// NewBackoff returns a Backoff between min and max.
func NewBackoff(min, max time.Duration) *Backoff {
	return &Backoff{*backoff.New(min, max)}
}

// Next returns the wait before the next attempt after err (which may be
// nil) and advances the attempt counter.
func (b *Backoff) Next(err error) time.Duration {
	var hint time.Duration
	var ae *APIError
	if errors.As(err, &ae) {
		hint = ae.RetryAfter
	}
	return b.Backoff.Next(hint)
}
