package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// worldReadableTempDir returns a temporary directory that unprivileged
// users (the probe runs as nobody) can traverse; removed in t.Cleanup.
func worldReadableTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "airlock-test-")
	if err != nil {
		t.Fatalf("creating temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod %s: %v", dir, err)
	}
	return dir
}

// BuildProbe builds the static probe helper (internal/testenv/cmd/probe)
// into a world-readable temporary directory and returns its path.
func BuildProbe(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("locating testenv sources")
	}
	out := filepath.Join(worldReadableTempDir(t), "probe")
	goBin := "go" // go test puts its own GOROOT/bin first in PATH
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, ".")
	cmd.Dir = filepath.Join(filepath.Dir(file), "cmd", "probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building probe: %v\n%s", err, b)
	}
	return out
}

// ProbeResult is the outcome of one probe run.
type ProbeResult struct {
	// Line is the probe's result line ("ok ..." or "fail ...").
	Line string
	// OK reports whether the probe exited 0 (the operation succeeded).
	OK bool
	// Stderr holds diagnostics.
	Stderr string
}

// RunProbe runs probe with args inside the network namespace at nsPath as
// user and group 65534 without any capability and with no_new_privs, the
// way a job process runs. env is added to an empty environment.
func RunProbe(ctx context.Context, t testing.TB, nsPath, probe string, env []string, args ...string) ProbeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	argv := append([]string{
		"--net=" + nsPath, "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
		probe,
	}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := ProbeResult{Line: strings.TrimSpace(stdout.String()), OK: err == nil, Stderr: strings.TrimSpace(stderr.String())}
	if err != nil {
		if _, exit := err.(*exec.ExitError); !exit || res.Line == "" {
			t.Fatalf("running probe %v: %v (stdout %q, stderr %q)", args, err, res.Line, res.Stderr)
		}
	}
	return res
}

// HostListener is a TCP listener on the host that must stay unreachable
// from jobs. It greets every connection with a line and counts them.
type HostListener struct {
	net.Listener
	hits atomic.Int64
}

// Hits returns how many connections were accepted.
func (l *HostListener) Hits() int64 { return l.hits.Load() }

// AddrPort returns "IP:PORT" of the listener.
func (l *HostListener) AddrPort() string { return l.Addr().String() }

// ListenHost opens a TCP listener on addr (e.g. "127.0.0.1:0" or a job's
// gateway IP) in the test's own namespace; closed in t.Cleanup.
func ListenHost(t testing.TB, addr string) *HostListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	hl := &HostListener{Listener: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hl.hits.Add(1)
			fmt.Fprintf(c, "host-listener %s\n", ln.Addr())
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return hl
}
