// Package backoff is the one implementation of waiting between retries:
// exponential steps with jitter, a floor so that no retry loop is tight,
// the server's hint (Retry-After) honoured, and a sleep that ends with its
// context.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff computes waits between retries: the n-th wait is drawn from
// [step/2, step] where step = Min·2ⁿ capped at Max, and is never shorter
// than Min nor than the hint given to Next. Not safe for concurrent use;
// one per retry loop.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// New returns a Backoff between min (default 100ms) and max.
func New(min, max time.Duration) *Backoff {
	if min <= 0 {
		min = 100 * time.Millisecond
	}
	if max < min {
		max = min
	}
	return &Backoff{Min: min, Max: max}
}

// Next returns the wait before the next attempt and advances the attempt
// counter. hint is the server's own wait (Retry-After), 0 if none: the
// result is at least hint, even beyond Max (the server knows best).
func (b *Backoff) Next(hint time.Duration) time.Duration {
	d := Delay(b.Min, b.Max, b.attempt)
	b.attempt++
	return max(d, hint)
}

// Delay is the wait before retry n (0-based) of a Backoff between min and
// max, for callers that count failures themselves.
func Delay(min, max time.Duration, n int) time.Duration {
	step := min
	for i := 0; i < n && step < max; i++ {
		step *= 2
	}
	if step > max {
		step = max
	}
	if d := Jitter(step); d > min {
		return d
	}
	return min
}

// Reset starts over after a success.
func (b *Backoff) Reset() { b.attempt = 0 }

// Jitter returns a random duration in [d/2, d] (0 for d <= 0), so that
// many clients retrying the same failure spread out.
func Jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

// Sleep waits d, or until ctx ends and then returns context.Cause(ctx).
// A d <= 0 returns at once (ctx's error if it has ended).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
