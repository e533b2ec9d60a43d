package executors

import (
	"bytes"
	"context"
	"io"
	"sync"
	"time"
)

// ServiceLogCap bounds the output a ServiceLog keeps.
const ServiceLogCap = 1 << 20

// ServiceLog keeps the first ServiceLogCap bytes of a service's output in
// memory, never on disk (a service may print what its secret variables
// hold), for Service.Logs, and wakes followers. Close ends following.
type ServiceLog struct {
	mu     sync.Mutex
	b      bytes.Buffer
	closed bool
	wake   chan struct{}
}

func (l *ServiceLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := ServiceLogCap - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	l.notify()
	return len(p), nil
}

// notify wakes the followers; l.mu is held.
func (l *ServiceLog) notify() {
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}

func (l *ServiceLog) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.notify()
}

// CopyTo writes what the service wrote, then (follow) what it writes
// until ctx ends or the log is closed.
func (l *ServiceLog) CopyTo(ctx context.Context, w io.Writer, follow bool) error {
	off := 0
	for {
		l.mu.Lock()
		chunk := append([]byte(nil), l.b.Bytes()[off:]...)
		closed := l.closed
		if l.wake == nil {
			l.wake = make(chan struct{})
		}
		wake := l.wake
		l.mu.Unlock()
		if len(chunk) > 0 {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
			off += len(chunk)
		}
		if !follow || closed {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-time.After(time.Second):
		}
	}
}
