package stepd

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// session runs a Server over pipes and collects what it sends per exec.
type session struct {
	t    *testing.T
	in   *io.PipeWriter
	mu   sync.Mutex
	out  map[uint32]*bytes.Buffer
	errs map[uint32]*bytes.Buffer
	exit map[uint32]chan Exit
	done chan error
}

func newSession(t *testing.T, environ []string, reap bool) *session {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &session{t: t, in: inW, out: map[uint32]*bytes.Buffer{}, errs: map[uint32]*bytes.Buffer{}, exit: map[uint32]chan Exit{}, done: make(chan error, 1)}
	for id := uint32(1); id < 10; id++ {
		s.out[id], s.errs[id], s.exit[id] = &bytes.Buffer{}, &bytes.Buffer{}, make(chan Exit, 1)
	}
	srv := NewServer(outW, environ)
	if reap {
		sigchld := make(chan os.Signal, 16)
		signal.Notify(sigchld, syscall.SIGCHLD)
		t.Cleanup(func() { signal.Stop(sigchld) })
		srv.Reap(sigchld)
	}
	go func() { s.done <- srv.Serve(inR); outW.Close() }()
	f, err := ReadFrame(outR)
	if err != nil || f.Kind != KindHello || string(f.Payload) != Version {
		t.Fatalf("first frame %q %q %v, want hello", f.Kind, f.Payload, err)
	}
	go func() {
		for {
			f, err := ReadFrame(outR)
			if err != nil {
				return
			}
			s.mu.Lock()
			switch f.Kind {
			case KindStdout:
				s.out[f.ID].Write(f.Payload)
			case KindStderr:
				s.errs[f.ID].Write(f.Payload)
			case KindExit:
				var x Exit
				if err := json.Unmarshal(f.Payload, &x); err != nil {
					t.Errorf("exit frame %q: %v", f.Payload, err)
				}
				s.exit[f.ID] <- x
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { inW.Close() })
	return s
}

func (s *session) send(kind byte, id uint32, payload []byte) {
	if err := WriteFrame(s.in, Frame{Kind: kind, ID: id, Payload: payload}); err != nil {
		s.t.Fatal(err)
	}
}

func (s *session) start(id uint32, st Start) {
	b, _ := json.Marshal(st)
	s.send(KindStart, id, b)
}

func (s *session) wait(id uint32) (Exit, string, string) {
	s.t.Helper()
	select {
	case x := <-s.exit[id]:
		s.mu.Lock()
		defer s.mu.Unlock()
		return x, s.out[id].String(), s.errs[id].String()
	case <-time.After(20 * time.Second):
		s.t.Fatalf("no exit for exec %d", id)
		return Exit{}, "", ""
	}
}

func TestServerRunsSteps(t *testing.T) {
	t.Run("waiting", func(t *testing.T) { testServerRunsSteps(t, false) })
	// As a container's PID 1: one reaper for every process (this test
	// process stands in; it has no other children).
	t.Run("reaping", func(t *testing.T) { testServerRunsSteps(t, true) })
}

func testServerRunsSteps(t *testing.T, reap bool) {
	s := newSession(t, []string{"PATH=/usr/bin:/bin", "KEEP=image", "OVER=image"}, reap)
	s.start(1, Start{Cmd: []string{"sh", "-c", `echo "$KEEP|$OVER|$NEW"; echo err >&2; exit 7`}, Env: []string{"OVER=step", "NEW=1"}})
	if x, out, errOut := s.wait(1); x.Code != 7 || out != "image|step|1\n" || errOut != "err\n" {
		t.Errorf("step 1: %+v %q %q", x, out, errOut)
	}
	// Stdin in several frames, then its end; two execs at once.
	s.start(2, Start{Cmd: []string{"sh", "-c", "tr a-z A-Z"}, Stdin: true})
	s.start(3, Start{Cmd: []string{"sh", "-c", "pwd; kill -KILL $$"}, Dir: "/tmp"})
	s.send(KindStdin, 2, []byte("hello "))
	s.send(KindStdin, 2, []byte("world\n"))
	s.send(KindStdinEOF, 2, nil)
	if x, out, _ := s.wait(2); x.Code != 0 || out != "HELLO WORLD\n" {
		t.Errorf("stdin step: %+v %q", x, out)
	}
	if x, out, _ := s.wait(3); x.Code != 128+9 || out != "/tmp\n" {
		t.Errorf("killed step: %+v %q, want 137 in /tmp", x, out)
	}
	s.start(4, Start{Cmd: []string{"definitely-not-a-command"}})
	if x, _, _ := s.wait(4); x.Code != 127 || !strings.Contains(x.Error, "definitely-not-a-command") {
		t.Errorf("missing command: %+v", x)
	}
	s.start(5, Start{Cmd: []string{"/bin/sh", "-c", "true"}, Dir: "/nonexistent-dir"})
	if x, _, _ := s.wait(5); x.Code != 126 || x.Error == "" {
		t.Errorf("bad dir: %+v, want 126 with a reason", x)
	}
	// A step that never reads a large stdin does not wedge the server.
	s.start(6, Start{Cmd: []string{"sh", "-c", "exit 0"}, Stdin: true})
	big := bytes.Repeat([]byte("x"), ChunkSize)
	for i := 0; i < 200; i++ {
		s.send(KindStdin, 6, big)
	}
	s.send(KindStdinEOF, 6, nil)
	if x, _, _ := s.wait(6); x.Code != 0 {
		t.Errorf("step ignoring stdin: %+v", x)
	}
	s.start(7, Start{Cmd: []string{"sh", "-c", "echo still"}})
	if x, out, _ := s.wait(7); x.Code != 0 || out != "still\n" {
		t.Errorf("after: %+v %q", x, out)
	}
}

// Corrupt input ends Serve with an error, never a panic.
func TestServerRejectsCorruptFrames(t *testing.T) {
	for name, raw := range map[string][]byte{
		"unknown kind": {'Z', 0, 0, 0, 1, 0, 0, 0, 0},
		"huge length":  {'S', 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff},
		"truncated":    {'S', 0, 0, 0, 1, 0, 0, 0, 9, '{'},
	} {
		err := NewServer(io.Discard, nil).Serve(bytes.NewReader(raw))
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: Serve = %v, want an error", name, err)
		}
	}
	var out bytes.Buffer
	if err := NewServer(&out, nil).Serve(bytes.NewReader(append([]byte{'S', 0, 0, 0, 1, 0, 0, 0, 3}, "{x}"...))); err != nil {
		t.Fatalf("malformed start: %v", err)
	}
	r := bytes.NewReader(out.Bytes())
	ReadFrame(r) // hello
	f, err := ReadFrame(r)
	if err != nil || f.Kind != KindExit || !strings.Contains(string(f.Payload), "malformed") {
		t.Errorf("malformed start answered %q %q %v, want an exit naming it", f.Kind, f.Payload, err)
	}
}

func TestMergeEnv(t *testing.T) {
	got := strings.Join(MergeEnv([]string{"A=1", "B=2"}, []string{"B=3", "C=4", "A=5"}), " ")
	if got != "A=5 B=3 C=4" {
		t.Errorf("MergeEnv = %q", got)
	}
}

// A step that fails at once reports its code every time, also when it
// ends before the server has finished starting it (the reaper must not
// reap it unregistered).
func TestServerFastExitsKeepTheirCode(t *testing.T) {
	for _, reap := range []bool{false, true} {
		s := newSession(t, []string{"PATH=/usr/bin:/bin"}, reap)
		for round := 0; round < 20; round++ {
			for id := uint32(1); id < 10; id++ {
				s.start(id, Start{Cmd: []string{"/bin/sh", "-c", "exit 3"}})
			}
			for id := uint32(1); id < 10; id++ {
				if x, _, _ := s.wait(id); x.Code != 3 {
					t.Fatalf("reap=%v round %d exec %d: exit %+v, want 3", reap, round, id, x)
				}
			}
		}
	}
}

// A reaping server stops reaping once Serve has returned: its reaper left
// running took children it never started, here the next session's (CI
// saw "no exit for exec 4"), or this test's own.
func TestReaperStopsWithServe(t *testing.T) {
	s := newSession(t, []string{"PATH=/usr/bin:/bin"}, true)
	s.start(1, Start{Cmd: []string{"/bin/sh", "-c", "exit 0"}})
	s.wait(1)
	s.in.Close()
	if err := <-s.done; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	cmd := exec.Command("/bin/sh", "-c", "exit 5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // past the reaper's one-second tick
	var ee *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("Wait() of a child the server never started = %v, want exit status 5", err)
	}
}
