package stepd

import (
	"bufio"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/airlock-ci/airlock/executors"
)

// ServerName is the step server's file name, looked for next to the
// airlock binary when step_server is not set.
const ServerName = "airlock-stepd"

// Target is where the step server is mounted in a job container.
const Target = "/.airlock-stepd"

// HoldArg is the step server's only argument in a network holder (the
// Docker executor's HoldNetwork): it does nothing until SIGTERM or
// SIGINT, keeping the holder's network namespace alive for a job.
const HoldArg = "hold"

// Resolve returns the host path of the step server an executor mounts
// into job containers, or "" and why for an engine exec per step. An
// explicit path must be a static executable; "off" turns it off; empty
// takes airlock-stepd next to the running binary when it is one. key names
// the setting in errors ("docker.step_server").
func Resolve(key, setting string) (path, why string, err error) {
	switch setting {
	case "off":
		return "", "step_server = \"off\"", nil
	case "":
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Sprintf("finding the running binary: %v", err), nil
		}
		p := filepath.Join(filepath.Dir(self), ServerName)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Sprintf("no %s next to the binary (%s)", ServerName, p), nil
		}
		if err := checkStatic(p); err != nil {
			return "", err.Error(), nil
		}
		return p, "", nil
	}
	if !filepath.IsAbs(setting) {
		return "", "", fmt.Errorf("%s: %q is not an absolute path (or \"off\")", key, setting)
	}
	if err := checkStatic(setting); err != nil {
		return "", "", fmt.Errorf("%s: %w", key, err)
	}
	return setting, "", nil
}

// checkStatic makes sure p is an executable ELF file without an
// interpreter: it runs in images that have no libc of the host's.
func checkStatic(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0", p)
		}
	}
	return nil
}

// Client is the host's end of a container's step server: frames written
// to the server's stdin, frames read from its stdout and handed to the
// exec waiting for them.
type Client struct {
	w     io.Writer
	close func() error
	job   string

	wmu sync.Mutex

	mu      sync.Mutex
	next    uint32
	waiters map[uint32]*waiter
	err     error // set once the stream ended
	done    chan struct{}
	hello   chan error // the Hello frame's outcome, once
}

// NewClient returns a client writing to w (the server's stdin); close
// ends the transport. Run must be started to read the server's frames.
func NewClient(w io.Writer, close func() error, job string) *Client {
	return &Client{w: w, close: close, job: job, waiters: map[uint32]*waiter{}, done: make(chan struct{}), hello: make(chan error, 1)}
}

// waiter is an exec waiting for its frames; gone closes when it stops
// reading them.
type waiter struct {
	frames chan Frame
	gone   chan struct{}
}

// Run reads the server's frames from r (its stdout) until it ends and
// hands each to its exec; diag is what the server printed on stderr, for
// the error the stream's end is reported with. Ready reports whether the
// server said hello.
func (s *Client) Run(r io.Reader, diag func() string) {
	r = bufio.NewReaderSize(r, 64<<10)
	f, err := ReadFrame(r)
	if err == nil && (f.Kind != KindHello || string(f.Payload) != Version) {
		err = fmt.Errorf("unexpected first frame %q %q, want hello %s", f.Kind, f.Payload, Version)
	}
	s.hello <- err
	for err == nil {
		if f, err = ReadFrame(r); err != nil {
			break
		}
		s.mu.Lock()
		w := s.waiters[f.ID]
		s.mu.Unlock()
		if w != nil {
			select {
			case w.frames <- f:
			case <-w.gone:
			}
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
		err = errors.New("the step server's stream ended")
	}
	if d := strings.TrimSpace(diag()); d != "" {
		err = fmt.Errorf("%w: %s", err, d)
	}
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	close(s.done)
}

// Diag keeps the first Limit bytes written to it (a server's stderr) and
// discards the rest; it is safe for concurrent use.
type Diag struct {
	mu    sync.Mutex
	b     strings.Builder
	Limit int
}

func (d *Diag) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := d.Limit - d.b.Len(); n > 0 {
		if len(p) < n {
			n = len(p)
		}
		d.b.Write(p[:n])
	}
	return len(p), nil
}

// String returns what was kept.
func (d *Diag) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.String()
}

func (s *Client) send(f Frame) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return WriteFrame(s.w, f)
}

// Ready waits up to timeout for the server's hello. On failure the error
// says how the server ended when it did (what it printed, say).
func (s *Client) Ready(timeout time.Duration) error {
	var err error
	select {
	case err = <-s.hello:
	case <-time.After(timeout):
		err = fmt.Errorf("no hello within %v", timeout)
	}
	if err == nil {
		return nil
	}
	if serr := s.EndErr(time.Second); serr != nil && !errors.Is(serr, err) {
		err = fmt.Errorf("%w; it ended: %v", err, serr)
	}
	return err
}

// Close ends the transport.
func (s *Client) Close() error { return s.close() }

// EndErr waits up to d for the stream to end and returns why it did, or
// nil when it is still open.
func (s *Client) EndErr(d time.Duration) error {
	select {
	case <-s.done:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.err
	case <-time.After(d):
		return nil
	}
}

// Exec runs x through the step server. Nil writers discard; x.User is
// the caller's to check (the server runs every step as its own user). On
// ctx's end it calls stop with x.Grace (grace when that is zero), which
// signals the job's processes, and waits, bounded, for the exit.
func (s *Client) Exec(ctx context.Context, x executors.Exec, grace time.Duration, stop func(grace time.Duration) error) (int, error) {
	w := &waiter{frames: make(chan Frame, 64), gone: make(chan struct{})}
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return -1, fmt.Errorf("exec in job %s: %w", s.job, err)
	}
	s.next++
	id := s.next
	s.waiters[id] = w
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waiters, id)
		s.mu.Unlock()
		close(w.gone)
	}()

	stdin, stdout, stderr := x.Stdin, x.Stdout, x.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	if x.Grace != 0 {
		grace = x.Grace
	}
	b, err := json.Marshal(Start{Cmd: x.Cmd, Env: x.Env, Dir: x.WorkDir, Stdin: stdin != nil})
	if err != nil {
		return -1, err
	}
	if err := s.send(Frame{Kind: KindStart, ID: id, Payload: b}); err != nil {
		return -1, fmt.Errorf("starting exec in job %s: %w", s.job, err)
	}
	if stdin != nil {
		go func() {
			buf := make([]byte, ChunkSize)
			for {
				n, err := stdin.Read(buf)
				if n > 0 && s.send(Frame{Kind: KindStdin, ID: id, Payload: append([]byte(nil), buf[:n]...)}) != nil {
					return
				}
				if err != nil {
					break
				}
			}
			_ = s.send(Frame{Kind: KindStdinEOF, ID: id})
		}()
	}

	var stopErr error
	stopped := false
	// handle takes one frame; done reports the exec's end.
	handle := func(f Frame) (code int, done bool, err error) {
		switch f.Kind {
		case KindStdout:
			_, _ = stdout.Write(f.Payload)
		case KindStderr:
			_, _ = stderr.Write(f.Payload)
		case KindExit:
			var ex Exit
			if err := json.Unmarshal(f.Payload, &ex); err != nil {
				return -1, true, fmt.Errorf("exec in job %s: malformed exit frame: %w", s.job, err)
			}
			if stopped {
				return -1, true, errors.Join(context.Cause(ctx), stopErr)
			}
			if ex.Error != "" {
				// As a shell reports a command it cannot run.
				fmt.Fprintf(stderr, "airlock: %s\n", ex.Error)
			}
			return ex.Code, true, nil
		}
		return 0, false, nil
	}
	var deadline <-chan time.Time
	ctxDone := ctx.Done()
	for {
		select {
		case f := <-w.frames:
			if code, done, err := handle(f); done {
				return code, err
			}
		case <-ctxDone:
			ctxDone = nil
			stopped = true
			stopErr = stop(grace)
			deadline = time.After(10 * time.Second)
		case <-deadline:
			return -1, errors.Join(context.Cause(ctx), stopErr, fmt.Errorf("job %s: no exit from the step server after its processes were stopped", s.job))
		case <-s.done:
			// Every frame run handed over before the end is queued here.
			for {
				select {
				case f := <-w.frames:
					if code, done, err := handle(f); done {
						return code, err
					}
					continue
				default:
				}
				break
			}
			s.mu.Lock()
			err := s.err
			s.mu.Unlock()
			if stopped {
				return -1, errors.Join(context.Cause(ctx), stopErr)
			}
			return -1, fmt.Errorf("exec in job %s: %w", s.job, err)
		}
	}
}
