package stepd

import (
	"testing"
	"time"
)

// TestDrainClockLeavesOutWrites: time in writes after the exit does not
// count, time between them does, and writes before the exit are not
// subtracted from the wait after it.
func TestDrainClockLeavesOutWrites(t *testing.T) {
	var c DrainClock
	_ = c.Timed(func() error { time.Sleep(50 * time.Millisecond); return nil })
	c.Start()
	start := time.Now()
	_ = c.Timed(func() error { time.Sleep(300 * time.Millisecond); return nil })
	time.Sleep(100 * time.Millisecond)
	waited, total := c.Waited(), time.Since(start)
	if waited > total-300*time.Millisecond || waited < 100*time.Millisecond {
		t.Errorf("Waited() = %v after %v of which 300ms writing, want the %v not writing", waited, total, total-300*time.Millisecond)
	}
	// A write under way stops the clock too.
	started := make(chan struct{})
	release := make(chan struct{})
	go func() {
		_ = c.Timed(func() error { close(started); <-release; return nil })
	}()
	<-started
	before := c.Waited()
	time.Sleep(200 * time.Millisecond)
	if d := c.Waited() - before; d > 100*time.Millisecond {
		t.Errorf("the clock ran %v during a write under way", d)
	}
	close(release)
	done := make(chan struct{})
	close(done)
	if c.Expired(done, 24*time.Hour) {
		t.Errorf("Expired(a day) with the output ended = true")
	}
	if !c.Expired(make(chan struct{}), 100*time.Millisecond) {
		t.Errorf("Expired(100ms) with the output open = false")
	}
}
