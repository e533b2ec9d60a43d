package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	b := New(time.Second, 8*time.Second)
	steps := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second}
	for i, step := range steps {
		d := b.Next(0)
		if d < max(step/2, b.Min) || d > step {
			t.Errorf("attempt %d: Next = %v, want in [%v, %v]", i, d, max(step/2, b.Min), step)
		}
	}
	if d := b.Next(time.Minute); d != time.Minute {
		t.Errorf("Next(hint 1m) = %v, want the hint", d)
	}
	b.Reset()
	if d := b.Next(0); d != time.Second {
		t.Errorf("Next after Reset = %v, want Min", d)
	}
	if d := New(0, 0).Next(0); d != 100*time.Millisecond {
		t.Errorf("default floor = %v, want 100ms", d)
	}
}

func TestJitter(t *testing.T) {
	for i := 0; i < 100; i++ {
		if d := Jitter(10 * time.Second); d < 5*time.Second || d > 10*time.Second {
			t.Fatalf("Jitter(10s) = %v, want in [5s, 10s]", d)
		}
	}
	if d := Jitter(-1); d != 0 {
		t.Errorf("Jitter(-1) = %v", d)
	}
}

func TestSleep(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("Sleep = %v", err)
	}
	cause := errors.New("stopped")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)
	if err := Sleep(ctx, time.Hour); !errors.Is(err, cause) {
		t.Errorf("Sleep on an ended ctx = %v, want its cause", err)
	}
	if err := Sleep(ctx, 0); !errors.Is(err, cause) {
		t.Errorf("Sleep(0) on an ended ctx = %v, want its cause", err)
	}
}
