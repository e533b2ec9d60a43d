package stepd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Server runs the steps the host asks for. Its zero value is not usable:
// see NewServer.
type Server struct {
	out     io.Writer
	environ []string

	wmu sync.Mutex // one frame at a time on out

	mu    sync.Mutex
	stdin map[uint32]*stdinPipe
	wg    sync.WaitGroup

	// As a container's PID 1 the server reaps every process that ends in
	// it (orphans are re-parented to it), so it cannot let os/exec wait
	// for its own children: one reaper waits for all and hands a step's
	// status to it. procMu is held from before a fork until the child is
	// registered, and around every reap, so a child that exits at once is
	// never reaped unregistered and a reaped pid is not reused meanwhile.
	reaping  bool
	procMu   sync.Mutex
	children map[int]chan syscall.WaitStatus
	served   chan struct{} // closed when Serve has returned: the reaper stops
}

// stdinPipe feeds a step's stdin from the frames; a full pipe (a step
// that does not read) blocks the frames behind it, never loses them.
type stdinPipe struct {
	mu     sync.Mutex
	ch     chan []byte
	closed bool
}

func (p *stdinPipe) put(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.ch <- b
	}
}

func (p *stdinPipe) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.ch)
	}
}

// NewServer returns a server that writes its frames to out and gives each
// step environ (the container's environment) under the step's own.
func NewServer(out io.Writer, environ []string) *Server {
	return &Server{out: out, environ: environ, stdin: map[uint32]*stdinPipe{}, served: make(chan struct{})}
}

// Reap makes the server the reaper of every process in its pid namespace
// (call it before Serve when it runs as PID 1). sigchld must be notified
// of SIGCHLD (signal.Notify). The reaper stops when Serve has returned
// (every step's status collected): one left running would take the
// children of whatever in the process forks next.
func (s *Server) Reap(sigchld <-chan os.Signal) {
	s.reaping = true
	s.children = map[int]chan syscall.WaitStatus{}
	go func() {
		tick := time.NewTicker(time.Second) // a lost notification is not fatal
		defer tick.Stop()
		for {
			select {
			case <-s.served:
				return
			case <-sigchld:
			case <-tick.C:
			}
			s.reapAll()
		}
	}()
}

// reapAll reaps every ended process, handing each child's status to its
// step and dropping the others' (orphans').
func (s *Server) reapAll() {
	s.procMu.Lock()
	defer s.procMu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := s.children[pid]; ok {
			delete(s.children, pid)
			ch <- ws
		}
	}
}

func (s *Server) send(f Frame) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return WriteFrame(s.out, f)
}

// Serve says hello and runs the frames read from in until it ends, then
// waits for the steps it started. A corrupt frame ends it with an error.
func (s *Server) Serve(in io.Reader) error {
	defer close(s.served) // after the steps, below
	if err := s.send(Frame{Kind: KindHello, Payload: []byte(Version)}); err != nil {
		return err
	}
	defer s.wg.Wait()
	for {
		f, err := ReadFrame(in)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch f.Kind {
		case KindStart:
			var st Start
			if err := json.Unmarshal(f.Payload, &st); err != nil || len(st.Cmd) == 0 {
				s.exit(f.ID, Exit{Code: 126, Error: "stepd: malformed start frame"})
				continue
			}
			s.start(f.ID, st)
		case KindStdin, KindStdinEOF:
			s.mu.Lock()
			p := s.stdin[f.ID]
			if f.Kind == KindStdinEOF {
				delete(s.stdin, f.ID)
			}
			s.mu.Unlock()
			if p == nil {
				continue // the step is gone, or had no stdin
			}
			if f.Kind == KindStdinEOF {
				p.close()
			} else {
				p.put(f.Payload)
			}
		default:
			return fmt.Errorf("stepd: unknown frame kind %q", f.Kind)
		}
	}
}

func (s *Server) exit(id uint32, x Exit) {
	b, _ := json.Marshal(x)
	_ = s.send(Frame{Kind: KindExit, ID: id, Payload: b})
}

// start starts one step and, in the background, streams its output and
// sends its exit once the process has exited and both its streams ended,
// or Drain after its exit (as the engine's exec does): a background child
// holding stdout open keeps the step's output open for that long, and
// its output after that is read and dropped (the child is not killed by
// a broken pipe: a server a step started keeps running for the next).
func (s *Server) start(id uint32, st Start) {
	env := MergeEnv(s.environ, st.Env)
	path, err := lookPath(st.Cmd[0], getenv(env, "PATH"), st.Dir)
	if err != nil {
		s.exit(id, Exit{Code: 127, Error: err.Error()})
		return
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		s.exit(id, Exit{Code: 126, Error: err.Error()})
		return
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		s.exit(id, Exit{Code: 126, Error: err.Error()})
		return
	}
	cmd := &exec.Cmd{
		Path: path, Args: st.Cmd, Env: env, Dir: st.Dir, Stdout: outW, Stderr: errW,
		// A session of its own (as an engine's exec has): a step's `kill 0`
		// does not reach the server, and no process of the job can join
		// the server's process group (only a group of its own session).
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	var stdinW *os.File
	if st.Stdin {
		var stdinR *os.File
		if stdinR, stdinW, err = os.Pipe(); err != nil {
			outR.Close()
			outW.Close()
			errR.Close()
			errW.Close()
			s.exit(id, Exit{Code: 126, Error: err.Error()})
			return
		}
		cmd.Stdin = stdinR
		defer stdinR.Close()
	}
	var status chan syscall.WaitStatus
	if s.reaping {
		s.procMu.Lock()
	}
	err = cmd.Start()
	if s.reaping {
		if err == nil {
			status = make(chan syscall.WaitStatus, 1)
			s.children[cmd.Process.Pid] = status
		}
		s.procMu.Unlock()
	}
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if stdinW != nil {
			stdinW.Close()
		}
		s.exit(id, Exit{Code: 126, Error: fmt.Sprintf("starting %s: %v", st.Cmd[0], err)})
		return
	}
	if stdinW != nil {
		p := &stdinPipe{ch: make(chan []byte, 64)}
		s.mu.Lock()
		s.stdin[id] = p
		s.mu.Unlock()
		go func() {
			for b := range p.ch {
				if _, err := stdinW.Write(b); err != nil {
					break // the step closed its stdin: the rest is dropped
				}
			}
			stdinW.Close()
			for range p.ch {
			}
		}()
	}
	var streams sync.WaitGroup
	var clock DrainClock
	var omu sync.Mutex // one stream's frame at a time; detached under it
	detached := false
	stream := func(kind byte, r *os.File) {
		defer streams.Done()
		defer r.Close()
		buf := make([]byte, ChunkSize)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				omu.Lock()
				var serr error
				if !detached {
					serr = clock.Timed(func() error {
						return s.send(Frame{Kind: kind, ID: id, Payload: append([]byte(nil), buf[:n]...)})
					})
				}
				omu.Unlock()
				if serr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	streams.Add(2)
	go stream(KindStdout, outR)
	go stream(KindStderr, errR)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var code int
		if status != nil {
			code = waitCode(<-status)
			_ = cmd.Process.Release()
		} else {
			code = exitCode(cmd, cmd.Wait())
		}
		clock.Start()
		ended := make(chan struct{})
		go func() {
			streams.Wait()
			close(ended)
		}()
		if clock.Expired(ended, Drain) {
			omu.Lock()
			detached = true
			omu.Unlock()
		}
		s.mu.Lock()
		p := s.stdin[id]
		delete(s.stdin, id)
		s.mu.Unlock()
		if p != nil {
			p.close()
		}
		s.exit(id, Exit{Code: code})
	}()
}

// waitCode is the code the engine reports for ws: the status, or 128+n
// for a process killed by signal n.
func waitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// exitCode is waitCode for a command os/exec waited for.
func exitCode(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		return 126
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if err != nil && cmd.ProcessState.ExitCode() < 0 {
		return 126
	}
	return cmd.ProcessState.ExitCode()
}

// MergeEnv returns base with each KEY=VALUE of over replacing the same
// key or appended, in order: how the engine combines a container's
// environment with an exec's.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	idx := map[string]int{}
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		idx[k] = i
	}
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func getenv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// lookPath finds file in path (the step's PATH, not the server's); a name
// with a slash is taken as it is, relative to dir.
func lookPath(file, path, dir string) (string, error) {
	if strings.Contains(file, "/") {
		p := file
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		if err := executable(p); err != nil {
			return "", fmt.Errorf("exec %s: %w", file, err)
		}
		return file, nil
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			continue
		}
		p := filepath.Join(d, file)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec %s: executable file not found in $PATH", file)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return errors.New("permission denied")
	}
	return nil
}
