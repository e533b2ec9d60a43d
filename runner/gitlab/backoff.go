package gitlab

import (
	"errors"
	"math/rand/v2"
	"time"
)

// Backoff computes waits between retries: exponential with full jitter,
// never shorter than Min (so a retry loop is never tight) and never shorter
// than the server's Retry-After/RateLimit-ResetTime hint. Not safe for
// concurrent use; one per retry loop.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// NewBackoff returns a Backoff between min and max.
func NewBackoff(min, max time.Duration) *Backoff {
	if min <= 0 {
		min = 100 * time.Millisecond
	}
	if max < min {
		max = min
	}
	return &Backoff{Min: min, Max: max}
}

// Next returns the wait before the next attempt after err (which may be
// nil) and advances the attempt counter.
func (b *Backoff) Next(err error) time.Duration {
	ceil := b.Min
	for i := 0; i < b.attempt && ceil < b.Max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, b.Max)
	b.attempt++
	d := time.Duration(rand.Int64N(int64(ceil) + 1)) // full jitter in [0, ceil]
	d = max(d, b.Min)
	var ae *APIError
	if errors.As(err, &ae) && ae.RetryAfter > d {
		d = ae.RetryAfter
	}
	return d
}

// Reset starts over after a success.
func (b *Backoff) Reset() { b.attempt = 0 }
