// Package executortest is a conformance suite every executors.Executor
// must pass, in the manner of testing/fstest.TestFS: an implementation's
// own tests call Run with a constructor and an image, and the suite checks
// the properties the rest of Airlock relies on (no capabilities, no
// environment in the container's configuration, nothing of the job before
// Create returns, the whole process tree stopped on cancel with SIGTERM,
// grace, SIGKILL, Destroy after a failed or partial Create and twice,
// exit codes, streams, environment, work dir, user and limits).
//
// The suite runs commands inside the job container only through
// Container.Exec, so it needs an image with a POSIX shell and the usual
// tools at /bin (busybox will do; testenv.TestImage is one).
package executortest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
)

// Options carries the executor-specific hooks of the suite.
type Options struct {
	// Inspect returns the executor's own description of a container (what
	// `docker inspect` or `ctr container info` shows an operator). The
	// suite checks that no value given in Exec.Env appears in it.
	// Required.
	Inspect func(t *testing.T, c executors.Container) []byte
	// NetNS creates a network namespace for one test and returns its
	// path, removing it at cleanup. Needed only by executors that
	// implement executors.NamespaceJoiner.
	NetNS func(t *testing.T) string
	// Grace is the executor's SIGTERM-to-SIGKILL grace period for Destroy
	// (what Exec.Grace is for one command). The suite waits a generous
	// multiple of it (at least a minute) for a stop to finish before it
	// calls the stop hung; it never asserts how fast a stop is.
	Grace time.Duration
}

// bound is how long the suite waits for a stop (Destroy, a cancelled
// Exec) before it calls it hung.
func (s *suite) bound() time.Duration { return max(time.Minute, 10*s.opts.Grace) }

// Run runs the suite. newExecutor returns an executor for one test; Run
// calls it once per subtest and never closes it (register cleanup with
// t.Cleanup). The image must be present locally: the suite uses
// executors.PullNever.
func Run(t *testing.T, newExecutor func(t *testing.T) executors.Executor, image string, opts Options) {
	if opts.Inspect == nil {
		t.Fatal("executortest.Run: Options.Inspect is required")
	}
	s := &suite{newExecutor: newExecutor, image: image, opts: opts}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"NoCapabilities", s.testNoCapabilities},
		{"EnvNotInInspect", s.testEnvNotInInspect},
		{"IdleBeforeExec", s.testIdleBeforeExec},
		{"NoNetworkUntilPlumbed", s.testNoNetwork},
		{"ExitCodes", s.testExitCodes},
		{"Streams", s.testStreams},
		{"Env", s.testEnv},
		{"WorkDir", s.testWorkDir},
		{"User", s.testUser},
		{"Limits", s.testLimits},
		{"ReadOnly", s.testReadOnly},
		{"Mounts", s.testMounts},
		{"Copies", s.testCopies},
		{"CancelKillsProcessTree", s.testCancelKillsTree},
		{"CancelSendsTERMFirst", s.testCancelTermFirst},
		{"DestroyStopsRunningExec", s.testDestroyRunning},
		{"DestroyTwice", s.testDestroyTwice},
		{"InitEndedEndsExecs", s.testInitEnded},
		{"FailedCreateLeavesNothing", s.testFailedCreate},
		{"CancelledCreateLeavesNothing", s.testCancelledCreate},
		{"Leftovers", s.testLeftovers},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

type suite struct {
	newExecutor func(t *testing.T) executors.Executor
	image       string
	opts        Options
}

// env is one subtest's executor and runner id.
type env struct {
	s      *suite
	ex     executors.Executor
	runner string
}

func (s *suite) env(t *testing.T) *env {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	e := &env{s: s, ex: s.newExecutor(t), runner: "conf" + hex.EncodeToString(b)}
	t.Cleanup(func() { e.assertNothingLeft(t) })
	return e
}

// assertNothingLeft fails the test if the executor (when it is a Reaper)
// still lists something of this test's runner id, and removes it.
func (e *env) assertNothingLeft(t *testing.T) {
	t.Helper()
	r, ok := e.ex.(executors.Reaper)
	if !ok {
		return
	}
	ctx := context.Background()
	left, err := r.Leftovers(ctx, e.runner)
	if err != nil {
		t.Errorf("Leftovers(%s): %v", e.runner, err)
		return
	}
	for _, l := range left {
		t.Errorf("%s of job %q left behind", l.ID, l.JobID)
		_ = r.RemoveLeftover(ctx, l)
	}
}

func (e *env) spec(job string) executors.Spec {
	return executors.Spec{
		RunnerID: e.runner,
		JobID:    job,
		Image:    e.s.image,
		Pull:     executors.PullNever,
		WorkDir:  "/builds",
	}
}

// create makes a container and destroys it at cleanup.
func (e *env) create(t *testing.T, spec executors.Spec) executors.Container {
	t.Helper()
	if spec.NetNS == "" && joins(e.ex) {
		if e.s.opts.NetNS == nil {
			t.Fatal("the executor joins a namespace (NamespaceJoiner) but Options.NetNS is nil")
		}
		spec.NetNS = e.s.opts.NetNS(t)
	}
	c, err := e.ex.Create(context.Background(), spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Destroy(context.Background()); err != nil {
			t.Errorf("Destroy: %v", err)
		}
	})
	return c
}

func joins(ex executors.Executor) bool {
	j, ok := ex.(executors.NamespaceJoiner)
	return ok && j.JoinsNetNS()
}

// result is what one Exec returned.
type result struct {
	code           int
	stdout, stderr string
}

// sh runs a shell script and fails the test on an Exec error.
func sh(t *testing.T, c executors.Container, script string, mod ...func(*executors.Exec)) result {
	t.Helper()
	var out, errOut syncBuffer
	x := executors.Exec{Cmd: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &errOut}
	for _, m := range mod {
		m(&x)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, err := c.Exec(ctx, x)
	if err != nil {
		t.Fatalf("Exec(%q): %v (stderr %q)", script, err, errOut.String())
	}
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// mustSh is sh that also requires exit code 0.
func mustSh(t *testing.T, c executors.Container, script string, mod ...func(*executors.Exec)) string {
	t.Helper()
	r := sh(t, c, script, mod...)
	if r.code != 0 {
		t.Fatalf("Exec(%q) exited %d, want 0 (stdout %q, stderr %q)", script, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// syncBuffer is a bytes.Buffer safe for concurrent writes of both streams.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// psScript lists the container's processes as "pid ppid (comm)" lines
// using shell builtins only, so that the listing shell is the only process
// it adds; it prints its own pid first as "self PID".
const psScript = `echo "self $$"; for p in /proc/[0-9]*; do if read -r l < "$p/stat" 2>/dev/null; then echo "$l"; fi; done`

// process is one line of psScript's output.
type process struct {
	pid, ppid int
	comm      string
	state     string
}

func (p process) String() string { return fmt.Sprintf("%d(%s, parent %d)", p.pid, p.comm, p.ppid) }

// processes lists the container's live processes other than the listing
// shell itself.
func processes(t *testing.T, c executors.Container) []process {
	t.Helper()
	out := mustSh(t, c, psScript)
	var self int
	var ps []process
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if v, ok := strings.CutPrefix(line, "self "); ok {
			self, _ = strconv.Atoi(v)
			continue
		}
		open, close := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
		if open < 0 || close < open {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(line[:open]))
		f := strings.Fields(line[close+1:])
		if err != nil || len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if f[0] == "Z" || f[0] == "X" {
			continue // exited, waiting to be reaped
		}
		ps = append(ps, process{pid: pid, ppid: ppid, comm: line[open+1 : close], state: f[0]})
	}
	if self == 0 {
		t.Fatalf("process listing without its own pid: %q", out)
	}
	var others []process
	for _, p := range ps {
		if p.pid != self {
			others = append(others, p)
		}
	}
	sort.Slice(others, func(i, j int) bool { return others[i].pid < others[j].pid })
	return others
}

// extra returns the processes of now that are not in before.
func extra(before, now []process) []process {
	had := map[int]bool{}
	for _, p := range before {
		had[p.pid] = true
	}
	var out []process
	for _, p := range now {
		if !had[p.pid] {
			out = append(out, p)
		}
	}
	return out
}

// waitProcesses polls until the container has processes beyond idle (the
// command under test started them) and returns them.
func waitProcesses(t *testing.T, c executors.Container, idle []process, atLeast int) []process {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if got := extra(idle, processes(t, c)); len(got) >= atLeast {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the command did not start %d processes within 30s", atLeast)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
