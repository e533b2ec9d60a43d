package testenv

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// ServeOnLoopback starts a server process on a free loopback address and
// returns that address once an HTTP GET of path answers want; the process
// is stopped when the test ends. command makes the (unstarted) process for
// an address, bound to ctx. The free port is found by listening and
// closing, so another process may take it first: a server that exits is
// started again on another port (3 tries, 60 s each), and its output is
// shown when it never answers.
func ServeOnLoopback(t testing.TB, name string, command func(ctx context.Context, addr string) *exec.Cmd, path string, want int) string {
	t.Helper()
	for try := 1; ; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		addr := l.Addr().String()
		if err := l.Close(); err != nil {
			t.Fatalf("closing probe listener: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cmd := command(ctx, addr)
		out := &cappedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("starting %s: %v", name, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }() // killed on purpose at the end
		stop := func() { cancel(); <-exited }
		if answers("http://"+addr+path, want, exited, 60*time.Second) {
			t.Cleanup(stop)
			return addr
		}
		stop()
		if try == 3 {
			t.Fatalf("%s did not answer (3 tries, the last at %s); its output:\n%s", name, addr, out.String())
		}
	}
}

// answers polls url until it answers want (true), the process exits or
// the wait ends (false).
func answers(url string, want int, exited <-chan struct{}, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return true
			}
		}
		select {
		case <-exited:
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

// cappedBuffer keeps the first 64 KiB of a process's output.
type cappedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := 64<<10 - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *cappedBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}
