package executortest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
)

// Every capability set of a job process is empty and no-new-privileges is
// set, for the image's user (root in most images) as for any other.
func (s *suite) testNoCapabilities(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("caps"))
	for _, user := range []string{"", "0", "1000"} {
		out := mustSh(t, c, `grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status`,
			func(x *executors.Exec) { x.User = user })
		got := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			k, v, _ := strings.Cut(line, ":")
			got[k] = strings.TrimSpace(v)
		}
		for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
			if got[k] != "0000000000000000" {
				t.Errorf("user %q: %s = %q, want 0000000000000000", user, k, got[k])
			}
		}
		if got["NoNewPrivs"] != "1" {
			t.Errorf("user %q: NoNewPrivs = %q, want 1", user, got["NoNewPrivs"])
		}
	}
}

// Values given in Exec.Env reach the command but appear nowhere in the
// executor's description of the container.
func (s *suite) testEnvNotInInspect(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("inspect"))
	const secret = "conformance-secret-7f3a9c"
	out := mustSh(t, c, `echo "$TOKEN"`, func(x *executors.Exec) { x.Env = []string{"TOKEN=" + secret} })
	if out != secret+"\n" {
		t.Fatalf("the command saw TOKEN=%q, want %q", strings.TrimSpace(out), secret)
	}
	if raw := s.opts.Inspect(t, c); bytes.Contains(raw, []byte(secret)) {
		t.Errorf("the container's description shows a value given in Exec.Env:\n%s", raw)
	}
}

// Right after Create nothing of the job runs: only the idle entrypoint,
// which an Exec that ended leaves as it was.
func (s *suite) testIdleBeforeExec(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("idle"))
	idle := processes(t, c)
	if len(idle) == 0 {
		t.Fatal("no idle entrypoint in the container")
	}
	// An idle entrypoint is an init and a waiting shell (and its sleep);
	// more than that is something the executor or the image started.
	if len(idle) > 4 {
		t.Errorf("processes before any Exec: %v, want only the idle entrypoint", idle)
	}
	for _, p := range idle {
		if p.state == "R" {
			t.Errorf("idle process %v is running, want it waiting", p)
		}
	}
	mustSh(t, c, `sleep 0.1 & echo done`)
	if left := extra(idle, processes(t, c)); len(left) > 0 {
		// The background sleep may take its 0.1s.
		time.Sleep(500 * time.Millisecond)
		if left := extra(idle, processes(t, c)); len(left) > 0 {
			t.Errorf("processes left after the Exec ended: %v", left)
		}
	}
}

// The container has no network but loopback until the caller plumbs one.
func (s *suite) testNoNetwork(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("net"))
	if !joins(e.ex) {
		if ns := c.NetNS(); ns == "" {
			t.Error("NetNS() is empty for an executor that creates the namespace itself")
		} else if _, err := os.Stat(ns); err != nil {
			t.Errorf("NetNS() = %q: %v", ns, err)
		}
	}
	out := mustSh(t, c, `ls /sys/class/net`)
	for _, ifc := range strings.Fields(out) {
		if ifc != "lo" && !joins(e.ex) {
			t.Errorf("interface %q in a container nobody plumbed, want only lo", ifc)
		}
	}
}

func (s *suite) testExitCodes(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("exit"))
	tests := []struct {
		script string
		want   int
	}{
		{"true", 0},
		{"exit 1", 1},
		{"exit 7", 7},
		{"exit 255", 255},
		{`kill -KILL $$`, 128 + 9},
		{`kill -TERM $$`, 128 + 15},
	}
	for _, tc := range tests {
		if got := sh(t, c, tc.script).code; got != tc.want {
			t.Errorf("Exec(%q) exit code = %d, want %d", tc.script, got, tc.want)
		}
	}
	// A command that does not exist is an exit code too (as a shell says
	// 127), or an error; never a success.
	code, err := c.Exec(context.Background(), executors.Exec{Cmd: []string{"/nonexistent/command"}})
	if err == nil && code == 0 {
		t.Errorf("Exec of a missing command = 0, nil; want a non-zero exit code or an error")
	}
}

func (s *suite) testStreams(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("streams"))
	r := sh(t, c, `echo out1; echo err1 >&2; echo out2; echo err2 >&2`)
	if r.stdout != "out1\nout2\n" || r.stderr != "err1\nerr2\n" {
		t.Errorf("stdout, stderr = %q, %q; want %q, %q", r.stdout, r.stderr, "out1\nout2\n", "err1\nerr2\n")
	}
	// Stdin is delivered and closed at its end.
	r = sh(t, c, `tr a-z A-Z`, func(x *executors.Exec) { x.Stdin = strings.NewReader("shout\n") })
	if r.stdout != "SHOUT\n" {
		t.Errorf("stdin through tr = %q, want %q", r.stdout, "SHOUT\n")
	}
	// No stdin: the command reads end of file at once.
	if r = sh(t, c, `cat; echo eof`); r.stdout != "eof\n" {
		t.Errorf("cat without stdin printed %q, want %q", r.stdout, "eof\n")
	}
	// Nil writers discard.
	code, err := c.Exec(context.Background(), executors.Exec{Cmd: []string{"/bin/sh", "-c", "echo lost; echo lost >&2"}})
	if err != nil || code != 0 {
		t.Errorf("Exec with nil writers = %d, %v; want 0, nil", code, err)
	}
	// Large output arrives whole and in order.
	const lines = 20000
	out := mustSh(t, c, `i=0; while [ $i -lt 20000 ]; do echo "line $i"; i=$((i+1)); done`)
	got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(got) != lines || got[0] != "line 0" || got[lines-1] != "line 19999" {
		t.Errorf("large output: %d lines (first %q), want %d", len(got), got[0], lines)
	}
	// A background process holding the output does not hold the step
	// (the engine's exec waits 2 s for it): what it prints at once is
	// kept, and the step ends long before the process does.
	for _, user := range []string{"", "1000"} {
		start := time.Now()
		r := sh(t, c, `(sleep 0.3; echo late) & sleep 100 & echo early`, func(x *executors.Exec) { x.User = user })
		if took := time.Since(start); took > 50*time.Second || r.stdout != "early\nlate\n" {
			t.Errorf("as user %q, a step leaving a process that holds its output printed %q and took %v, want early, late and far less than the 100 s sleep", user, r.stdout, took.Round(time.Millisecond))
		}
	}
	// A slow reader (a copy out of the container feeding another) gets
	// all of it, though the command exited long before it was read: the
	// bound on reading after the exit is for output that stops moving.
	// Also as another user, which the step server cannot be.
	for _, user := range []string{"", "1000"} {
		var w slowWriter
		code, err := c.Exec(context.Background(), executors.Exec{User: user, Stdout: &w,
			Cmd: []string{"/bin/sh", "-c", `head -c 196608 /dev/zero | tr '\0' x`}})
		if err != nil || code != 0 || w.n != 196608 {
			t.Errorf("as user %q, a slow reader got %d of 196608 bytes (exit %d, %v)", user, w.n, code, err)
		}
	}
}

// slowWriter takes half a second over each write.
type slowWriter struct{ n int }

func (w *slowWriter) Write(b []byte) (int, error) {
	time.Sleep(500 * time.Millisecond)
	w.n += len(b)
	return len(b), nil
}

// Env is given per Exec, on top of the image's environment, and does not
// carry over to the next Exec.
func (s *suite) testEnv(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("env"))
	out := mustSh(t, c, `echo "$A|$B"`, func(x *executors.Exec) { x.Env = []string{"A=1", "B=two words"} })
	if out != "1|two words\n" {
		t.Errorf("env = %q, want %q", out, "1|two words\n")
	}
	if out := mustSh(t, c, `echo "${A-unset}"`); out != "unset\n" {
		t.Errorf("A in the next Exec = %q, want unset", strings.TrimSpace(out))
	}
	// The image's PATH applies: commands are found by name.
	code, err := c.Exec(context.Background(), executors.Exec{Cmd: []string{"sh", "-c", "exit 3"}})
	if err != nil || code != 3 {
		t.Errorf("Exec of sh by name = %d, %v; want 3, nil (the image's PATH)", code, err)
	}
}

func (s *suite) testWorkDir(t *testing.T) {
	e := s.env(t)
	spec := e.spec("workdir")
	spec.WorkDir = "/builds/group/project"
	c := e.create(t, spec)
	if out := mustSh(t, c, `pwd`); out != spec.WorkDir+"\n" {
		t.Errorf("pwd = %q, want the spec's work dir %q (created if missing)", strings.TrimSpace(out), spec.WorkDir)
	}
	if out := mustSh(t, c, `pwd`, func(x *executors.Exec) { x.WorkDir = "/tmp" }); out != "/tmp\n" {
		t.Errorf("pwd with Exec.WorkDir /tmp = %q", strings.TrimSpace(out))
	}
	mustSh(t, c, `echo x > "$PWD/written"`)
}

func (s *suite) testUser(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("user-image"))
	if out := mustSh(t, c, `id -u`); out != "0\n" {
		t.Errorf("id -u with the image's user = %q, want 0", strings.TrimSpace(out))
	}
	if out := mustSh(t, c, `id -u`, func(x *executors.Exec) { x.User = "1000" }); out != "1000\n" {
		t.Errorf("id -u with Exec.User 1000 = %q", strings.TrimSpace(out))
	}
	spec := e.spec("user-spec")
	spec.User = "1000:1000"
	c = e.create(t, spec)
	if out := mustSh(t, c, `echo "$(id -u):$(id -g)"`); out != "1000:1000\n" {
		t.Errorf("id with Spec.User 1000:1000 = %q", strings.TrimSpace(out))
	}
}

// cgroupScript prints the pids, memory and CPU limits of the job's cgroup
// (v2, or v1 as Docker mounts it) as three lines.
const cgroupScript = `cg=/sys/fs/cgroup
if [ -f $cg/cgroup.controllers ]; then
  cat $cg/pids.max $cg/memory.max; read -r q p < $cg/cpu.max; echo "$q $p"
else
  cat $cg/pids/pids.max $cg/memory/memory.limit_in_bytes; echo "$(cat $cg/cpu/cpu.cfs_quota_us) $(cat $cg/cpu/cpu.cfs_period_us)"
fi`

func (s *suite) testLimits(t *testing.T) {
	e := s.env(t)
	// Zero limits are the executor's defaults, never unlimited.
	c := e.create(t, e.spec("limits-default"))
	got := strings.Fields(mustSh(t, c, cgroupScript))
	if len(got) != 4 {
		t.Fatalf("cgroup limits: %q", got)
	}
	if got[0] == "max" || got[1] == "max" || got[1] == "9223372036854771712" || got[2] == "max" || got[2] == "-1" {
		t.Errorf("default limits pids %s, memory %s, cpu quota %s: want all bounded", got[0], got[1], got[2])
	}

	spec := e.spec("limits")
	spec.Limits = executors.Limits{Pids: 64, Memory: 96 << 20, CPUs: 0.5}
	c = e.create(t, spec)
	got = strings.Fields(mustSh(t, c, cgroupScript))
	if len(got) != 4 {
		t.Fatalf("cgroup limits: %q", got)
	}
	if got[0] != "64" {
		t.Errorf("pids limit = %s, want 64", got[0])
	}
	if got[1] != "100663296" {
		t.Errorf("memory limit = %s, want 100663296", got[1])
	}
	if got[2]+"/"+got[3] != "50000/100000" {
		t.Errorf("cpu quota/period = %s/%s, want 50000/100000", got[2], got[3])
	}
	// The pids limit holds: the job cannot start 100 processes. The fork
	// loop runs in a subshell (a failed fork may end it) and records each
	// pid; builtins then kill them, since no fork is left to spare.
	out := mustSh(t, c, `( i=0; while [ $i -lt 100 ]; do sleep 30 & echo $! >> /tmp/pids; i=$((i+1)); done ) 2>/dev/null
n=0; while read -r p; do kill $p; n=$((n+1)); done < /tmp/pids; echo $n`)
	if n, err := strconv.Atoi(strings.TrimSpace(out)); err != nil || n == 0 || n >= 64 {
		t.Errorf("processes started under a pids limit of 64: %q, want fewer than 64", strings.TrimSpace(out))
	}
}

// With Limits.ReadOnly the root is read-only but the work dir and /tmp
// are writable.
func (s *suite) testReadOnly(t *testing.T) {
	e := s.env(t)
	spec := e.spec("readonly")
	spec.Limits.ReadOnly = true
	c := e.create(t, spec)
	if r := sh(t, c, `echo x > /etc/written`); r.code == 0 {
		t.Error("writing /etc succeeded with a read-only root")
	}
	mustSh(t, c, `echo x > /tmp/written && echo x > /builds/written && cat /builds/written`)
	mustSh(t, c, `echo x > /tmp/w`, func(x *executors.Exec) { x.User = "1000" })
}

// Mounts are read-only.
func (s *suite) testMounts(t *testing.T) {
	e := s.env(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("mounted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := e.spec("mounts")
	spec.Mounts = []executors.Mount{{Source: dir, Target: "/run/conf"}}
	c := e.create(t, spec)
	if out := mustSh(t, c, `cat /run/conf/f`); out != "mounted\n" {
		t.Errorf("mounted file = %q", out)
	}
	if r := sh(t, c, `echo x > /run/conf/g`); r.code == 0 {
		t.Error("writing into a mount succeeded, want read-only")
	}
}

// When ctx ends, Exec stops every process the command started, including
// background children, orphans and processes ignoring SIGTERM, and
// returns ctx's cause; the container stays usable.
func (s *suite) testCancelKillsTree(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("cancel"))
	idle := processes(t, c)
	tests := []struct {
		name   string
		script string
		procs  int // at least this many processes once started
	}{
		{"foreground", "sleep 300", 1},
		{"ignores SIGTERM", "trap '' TERM; sleep 301 & sleep 302 & while :; do sleep 1; done", 3},
		{"background children", "sleep 303 & sleep 304 & wait", 3},
		{"orphans", "(sleep 305 &); (trap '' TERM; sleep 306) & (setsid sleep 307 &); sleep 308", 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c", tc.script}, Grace: 500 * time.Millisecond})
				errc <- err
			}()
			waitProcesses(t, c, idle, tc.procs)
			cause := errors.New("cancelled by the conformance suite")
			cancel(cause)
			select {
			case err := <-errc:
				if !errors.Is(err, cause) {
					t.Errorf("Exec error = %v, want the cancel cause", err)
				}
			case <-time.After(s.bound()):
				t.Fatalf("Exec did not return within %v of cancel", s.bound())
			}
			if left := extra(idle, processes(t, c)); len(left) > 0 {
				t.Errorf("processes left after cancel: %v", left)
			}
		})
	}
	if out := mustSh(t, c, `echo still usable`); out != "still usable\n" {
		t.Errorf("Exec after cancel printed %q", out)
	}
}

// SIGTERM comes first and the grace period is given: a command that
// cleans up on SIGTERM finishes its cleanup.
func (s *suite) testCancelTermFirst(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("term"))
	idle := processes(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	script := `trap 'echo term > /tmp/term; sleep 0.3; echo cleaned > /tmp/cleaned; exit 0' TERM; sleep 300 & wait`
	go func() {
		_, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c", script}, Grace: time.Minute})
		errc <- err
	}()
	waitProcesses(t, c, idle, 2)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Exec error = %v, want context.Canceled", err)
	}
	if out := mustSh(t, c, `cat /tmp/term /tmp/cleaned`); out != "term\ncleaned\n" {
		t.Errorf("after cancel the command left %q, want SIGTERM handled and its cleanup finished", out)
	}
	if left := extra(idle, processes(t, c)); len(left) > 0 {
		t.Errorf("processes left after cancel: %v", left)
	}
}

// Destroy during an Exec stops it (the Exec returns) and removes the
// container, even with a process that ignores SIGTERM.
func (s *suite) testDestroyRunning(t *testing.T) {
	e := s.env(t)
	spec := e.spec("destroy-running")
	if joins(e.ex) {
		spec.NetNS = s.opts.NetNS(t)
	}
	c, err := e.ex.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	idle := processes(t, c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = c.Exec(context.Background(), executors.Exec{Cmd: []string{"/bin/sh", "-c", "trap '' TERM; sleep 300 & wait"}})
	}()
	waitProcesses(t, c, idle, 2)
	if err := c.Destroy(context.Background()); err != nil {
		t.Errorf("Destroy: %v", err)
	}
	select {
	case <-done:
	case <-time.After(s.bound()):
		t.Errorf("Exec did not return within %v of Destroy", s.bound())
	}
	if _, err := c.Exec(context.Background(), executors.Exec{Cmd: []string{"true"}}); err == nil {
		t.Error("Exec after Destroy succeeded, want an error")
	}
}

// A container whose idle entrypoint ended (a job that signalled it, the
// kernel's OOM killer) ends the exec running in it and fails the next at
// once, instead of leaving them to the job's timeout; it is not alive
// (executors.Liveness), and Destroy still removes it.
func (s *suite) testInitEnded(t *testing.T) {
	e := s.env(t)
	spec := e.spec("init-ended")
	if joins(e.ex) {
		spec.NetNS = s.opts.NetNS(t)
	}
	c, err := e.ex.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Destroy(context.Background())
	if l, ok := c.(executors.Liveness); ok && !l.Alive() {
		t.Error("a running container is not alive")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c", "kill -TERM 1; sleep 300"}})
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(s.bound()):
		t.Fatalf("Exec did not return within %v of the container's init ending", s.bound())
	}
	next := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, executors.Exec{Cmd: []string{"true"}})
		next <- err
	}()
	select {
	case err := <-next:
		if !errors.Is(err, executors.ErrContainerStopped) {
			t.Errorf("Exec in a container whose init ended: %v, want an error wrapping ErrContainerStopped", err)
		}
	case <-time.After(s.bound()):
		t.Fatalf("the next Exec did not return within %v", s.bound())
	}
	if l, ok := c.(executors.Liveness); ok && l.Alive() {
		t.Error("a container whose init ended is alive")
	}
	if err := c.Destroy(context.Background()); err != nil {
		t.Errorf("Destroy: %v", err)
	}
}

// Destroy twice: the second is a no-op; concurrent Destroys are safe.
func (s *suite) testDestroyTwice(t *testing.T) {
	e := s.env(t)
	spec := e.spec("destroy-twice")
	if joins(e.ex) {
		spec.NetNS = s.opts.NetNS(t)
	}
	c, err := e.ex.Create(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() { errs <- c.Destroy(context.Background()) }()
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Destroy: %v", err)
		}
	}
	if err := c.Destroy(context.Background()); err != nil {
		t.Errorf("third Destroy: %v", err)
	}
}

// A Create that fails (bad spec, missing image, a user the image lacks,
// which fails only once the container exists) returns an error and leaves
// nothing behind.
func (s *suite) testFailedCreate(t *testing.T) {
	e := s.env(t)
	bad := []struct {
		name string
		mod  func(*executors.Spec)
	}{
		{"no job id", func(sp *executors.Spec) { sp.JobID = "" }},
		{"no runner id", func(sp *executors.Spec) { sp.RunnerID = "" }},
		{"missing image", func(sp *executors.Spec) { sp.Image = s.image + "-does-not-exist" }},
		{"unknown user", func(sp *executors.Spec) { sp.User = "no-such-user-in-image" }},
		{"missing mount source", func(sp *executors.Spec) {
			sp.Mounts = []executors.Mount{{Source: filepath.Join(t.TempDir(), "missing"), Target: "/run/x"}}
		}},
	}
	for i, tc := range bad {
		spec := e.spec("failed-" + string(rune('a'+i)))
		if joins(e.ex) {
			spec.NetNS = s.opts.NetNS(t)
		}
		tc.mod(&spec)
		c, err := e.ex.Create(context.Background(), spec)
		if err == nil {
			_ = c.Destroy(context.Background())
			t.Errorf("%s: Create succeeded, want an error", tc.name)
			continue
		}
		if c != nil {
			t.Errorf("%s: Create returned a container with its error", tc.name)
		}
		if tc.name == "missing image" && !errors.Is(err, executors.ErrImageNotFound) {
			t.Errorf("%s: error %v, want ErrImageNotFound", tc.name, err)
		}
	}
	// env's cleanup asserts that nothing of the runner is left.
}

// A Create whose ctx ends at any point returns an error and leaves
// nothing, or returns a container that Destroy removes.
func (s *suite) testCancelledCreate(t *testing.T) {
	e := s.env(t)
	for i, d := range []time.Duration{0, time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond} {
		spec := e.spec("cancelled-" + string(rune('a'+i)))
		if joins(e.ex) {
			spec.NetNS = s.opts.NetNS(t)
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		c, err := e.ex.Create(ctx, spec)
		cancel()
		if err == nil {
			if err := c.Destroy(context.Background()); err != nil {
				t.Errorf("Destroy after a Create that beat a %v deadline: %v", d, err)
			}
		}
	}
	e.eventuallyNothingLeft(t)
}

// eventuallyNothingLeft waits (bounded) for removals the executor started
// in the background to finish.
func (e *env) eventuallyNothingLeft(t *testing.T) {
	t.Helper()
	r, ok := e.ex.(executors.Reaper)
	if !ok {
		return
	}
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if left, err := r.Leftovers(context.Background(), e.runner); err == nil && len(left) == 0 {
			return
		}
	}
}

// A Reaper lists exactly this runner's containers, with their job ids,
// and removes them.
func (s *suite) testLeftovers(t *testing.T) {
	e := s.env(t)
	r, ok := e.ex.(executors.Reaper)
	if !ok {
		return
	}
	c := e.create(t, e.spec("leftover"))
	other := s.env(t)
	other.create(t, other.spec("leftover"))
	left, err := r.Leftovers(context.Background(), e.runner)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].JobID != "leftover" || left[0].Labels[executors.LabelRunner] != e.runner {
		t.Fatalf("Leftovers = %+v, want the one container of this runner", left)
	}
	if err := r.RemoveLeftover(context.Background(), left[0]); err != nil {
		t.Fatalf("RemoveLeftover: %v", err)
	}
	if err := r.RemoveLeftover(context.Background(), left[0]); err != nil {
		t.Errorf("RemoveLeftover of something gone: %v", err)
	}
	if left, _ := r.Leftovers(context.Background(), e.runner); len(left) != 0 {
		t.Errorf("Leftovers after RemoveLeftover = %+v", left)
	}
	// The Container's own Destroy still succeeds after recovery removed it.
	if err := c.Destroy(context.Background()); err != nil {
		t.Errorf("Destroy after RemoveLeftover: %v", err)
	}
}
