package stepd

import (
	"sync"
	"time"
)

// Drain bounds how long an exec's output is waited for after the exec
// exited, as the engine's exec does (2 s): a background process that
// holds the exec's stdout, or keeps writing to it, would otherwise keep
// the step from ending. Time spent writing the output to a slow reader
// (a copy out of the container feeding another) does not count.
const Drain = 2 * time.Second

// DrainClock measures the wait Drain bounds: the time since the exec
// exited, less the time its output's writes took since then.
type DrainClock struct {
	mu      sync.Mutex
	from    time.Time     // the exec's exit; zero before it
	writing time.Time     // start of the write under way, zero when none
	spent   time.Duration // in writes since from
}

// Timed runs write (one write of the exec's output), timing it. Writes
// must not overlap.
func (c *DrainClock) Timed(write func() error) error {
	c.mu.Lock()
	c.writing = time.Now()
	c.mu.Unlock()
	err := write()
	c.mu.Lock()
	c.spent += c.since(c.writing, time.Now())
	c.writing = time.Time{}
	c.mu.Unlock()
	return err
}

// Start starts the clock: the exec has exited.
func (c *DrainClock) Start() {
	c.mu.Lock()
	c.from = time.Now()
	c.mu.Unlock()
}

// Waited is the time since Start not spent writing.
func (c *DrainClock) Waited() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	w := now.Sub(c.from) - c.spent
	if !c.writing.IsZero() {
		w -= c.since(c.writing, now)
	}
	return w
}

// since is the part of start..end after the clock started.
func (c *DrainClock) since(start, end time.Time) time.Duration {
	if c.from.IsZero() || end.Before(c.from) {
		return 0
	}
	if start.Before(c.from) {
		start = c.from
	}
	return end.Sub(start)
}

// Expired polls c until it has waited d or done is closed, and reports
// whether it has waited d.
func (c *DrainClock) Expired(done <-chan struct{}, d time.Duration) bool {
	tick := time.NewTicker(d / 8)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return false
		case <-tick.C:
			if c.Waited() >= d {
				return true
			}
		}
	}
}
