package docker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// newTestExecutor returns an executor and a runner id unique to the test;
// at cleanup it asserts that no container of that runner is left.
func newTestExecutor(t *testing.T) (*Executor, string) {
	t.Helper()
	return newTestExecutorWith(t, Config{})
}

// newTestExecutorWith is newTestExecutor with cfg (its grace and step
// server set).
func newTestExecutorWith(t *testing.T, cfg Config) (*Executor, string) {
	t.Helper()
	testenv.RequireTestImage(t)
	cfg.Grace, cfg.StepServer = 2*time.Second, testenv.StepServer(t)
	e, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	runner := "t" + hex.EncodeToString(b)
	t.Cleanup(func() {
		left, err := e.Leftovers(context.Background(), runner)
		if err != nil {
			t.Errorf("listing leftovers: %v", err)
		}
		for _, l := range left {
			t.Errorf("container %s of runner %s left behind", shortID(l.ID), runner)
			_ = e.Remove(context.Background(), l.ID)
		}
		e.Close()
	})
	return e, runner
}

func create(t *testing.T, e *Executor, runner, job string) executors.Container {
	t.Helper()
	c, err := e.Create(context.Background(), executors.Spec{
		RunnerID: runner, JobID: job, Image: testenv.TestImage, Pull: executors.PullNever, WorkDir: "/builds",
	})
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

// syncBuffer is a bytes.Buffer safe for the concurrent writes of stdout
// and stderr.
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

func TestExecExitCodesAndOutput(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "exit")
	tests := []struct {
		name     string
		script   string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"success", "echo hello", 0, "hello\n", ""},
		{"exit code", "echo before; exit 7", 7, "before\n", ""},
		{"stderr", "echo oops >&2; exit 1", 1, "", "oops\n"},
		{"order", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; done", 0,
			"line1\nline2\nline3\nline4\nline5\nline6\nline7\nline8\nline9\nline10\n", ""},
		{"workdir", "pwd", 0, "/builds\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut syncBuffer
			code, err := c.Exec(context.Background(), executors.Exec{
				Cmd: []string{"/bin/sh", "-c", tc.script}, Stdout: &out, Stderr: &errOut,
			})
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code = %d, want %d", code, tc.wantCode)
			}
			if out.String() != tc.wantOut {
				t.Errorf("stdout = %q, want %q", out.String(), tc.wantOut)
			}
			if errOut.String() != tc.wantErr {
				t.Errorf("stderr = %q, want %q", errOut.String(), tc.wantErr)
			}
		})
	}
}

func TestExecStdin(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "stdin")
	var out syncBuffer
	code, err := c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"/bin/sh", "-c", "tr a-z A-Z"}, Stdin: strings.NewReader("shout\n"), Stdout: &out,
	})
	if err != nil || code != 0 {
		t.Fatalf("Exec = %d, %v", code, err)
	}
	if got := out.String(); got != "SHOUT\n" {
		t.Errorf("stdout = %q, want %q", got, "SHOUT\n")
	}
}

// The step environment is given at exec time only: docker inspect of the
// container must not show it.
func TestExecEnvNotInInspect(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "env")
	const secret = "s3cr3t-value-for-inspect-test"
	var out syncBuffer
	code, err := c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"/bin/sh", "-c", `test "$TOKEN" = ` + "'" + secret + "'" + ` && echo present`},
		Env: []string{"TOKEN=" + secret}, Stdout: &out,
	})
	if err != nil || code != 0 || out.String() != "present\n" {
		t.Fatalf("Exec = %d, %v, %q; want the variable visible to the step", code, err, out.String())
	}
	raw, err := exec.Command("docker", "inspect", c.ID()).CombinedOutput()
	if err != nil {
		t.Fatalf("docker inspect: %v: %s", err, raw)
	}
	if bytes.Contains(raw, []byte(secret)) {
		t.Errorf("docker inspect shows the step environment")
	}
	var info []struct {
		HostConfig struct {
			CapDrop     []string
			SecurityOpt []string
			NetworkMode string
			PidsLimit   int64
			Memory      int64
			Init        bool
		}
		Config struct{ Labels map[string]string }
	}
	if err := json.Unmarshal(raw, &info); err != nil || len(info) != 1 {
		t.Fatalf("decoding inspect: %v", err)
	}
	hc := info[0].HostConfig
	if len(hc.CapDrop) != 1 || hc.CapDrop[0] != "ALL" {
		t.Errorf("CapDrop = %v, want [ALL]", hc.CapDrop)
	}
	if len(hc.SecurityOpt) != 1 || hc.SecurityOpt[0] != "no-new-privileges:true" {
		t.Errorf("SecurityOpt = %v, want no-new-privileges", hc.SecurityOpt)
	}
	if hc.NetworkMode != "none" {
		t.Errorf("NetworkMode = %q, want none", hc.NetworkMode)
	}
	if hc.PidsLimit != DefaultPidsLimit || hc.Memory != DefaultMemory {
		t.Errorf("limits = pids %d memory %d, want %d and %d", hc.PidsLimit, hc.Memory, DefaultPidsLimit, DefaultMemory)
	}
	if got := info[0].Config.Labels[executors.LabelRunner]; got != runner {
		t.Errorf("runner label = %q, want %q", got, runner)
	}
}

// Nothing of the job runs before the first Exec: the only processes are
// init and the idle entrypoint.
func TestCreateIsIdle(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "idle").(*Container)
	pids, err := c.jobProcs()
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 0 {
		t.Errorf("job processes before any exec: %v, want none", pids)
	}
}

func TestExecCancelKillsProcesses(t *testing.T) {
	tests := []struct {
		name   string
		script string // must keep running until signalled
	}{
		{"terminates", "sleep 300"},
		// Ignores SIGTERM: killed after the grace period.
		{"ignores SIGTERM", "trap '' TERM; while :; do sleep 1; done"},
		// A background child outlives its shell: still found and killed.
		{"orphans", "sleep 301 & sleep 302 & wait"},
	}
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "cancel").(*Container)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			errc := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c", tc.script}, Grace: 500 * time.Millisecond})
				errc <- err
			}()
			waitFor(t, func() bool { p, _ := c.jobProcs(); return len(p) > 0 })
			cause := errors.New("canceled by test")
			cancel(cause)
			select {
			case err := <-errc:
				if !errors.Is(err, cause) {
					t.Errorf("Exec error = %v, want the cancel cause", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Exec did not return after cancel")
			}
			if p, _ := c.jobProcs(); len(p) != 0 {
				t.Errorf("processes left after cancel: %v", p)
			}
		})
	}
	// The container is still usable after a cancelled step (after_script).
	code, err := c.Exec(context.Background(), executors.Exec{Cmd: []string{"true"}})
	if err != nil || code != 0 {
		t.Errorf("Exec after cancel = %d, %v; want 0, nil", code, err)
	}
}

func TestExecTimeout(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "timeout")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := c.Exec(ctx, executors.Exec{Cmd: []string{"sleep", "300"}, Grace: 200 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Exec error = %v, want deadline exceeded", err)
	}
}

func TestDestroyIdempotent(t *testing.T) {
	e, runner := newTestExecutor(t)
	c, err := e.Create(context.Background(), executors.Spec{RunnerID: runner, JobID: "destroy", Image: testenv.TestImage, Pull: executors.PullNever})
	if err != nil {
		t.Fatal(err)
	}
	// A running step does not stop Destroy.
	go c.Exec(context.Background(), executors.Exec{Cmd: []string{"sleep", "300"}})
	time.Sleep(200 * time.Millisecond)
	for i := 0; i < 2; i++ {
		if err := c.Destroy(context.Background()); err != nil {
			t.Errorf("Destroy #%d: %v", i+1, err)
		}
	}
}

func TestCreateMissingImage(t *testing.T) {
	e, runner := newTestExecutor(t)
	_, err := e.Create(context.Background(), executors.Spec{RunnerID: runner, JobID: "noimage", Image: "airlock-test:does-not-exist", Pull: executors.PullNever})
	if !errors.Is(err, executors.ErrImageNotFound) {
		t.Fatalf("Create error = %v, want ErrImageNotFound", err)
	}
	if !strings.Contains(err.Error(), "airlock-test:does-not-exist") || !strings.Contains(err.Error(), "never") {
		t.Errorf("error %q should name the image and the pull policy", err)
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"1024", 1024, false},
		{"512m", 512 << 20, false},
		{"2g", 2 << 30, false},
		{"2GB", 2 << 30, false},
		{"1k", 1024, false},
		{"", 0, true},
		{"-1m", 0, true},
		{"lots", 0, true},
		{"99999999999g", 0, true}, // overflows int64
		{"9223372036854775807", 1<<63 - 1, false},
	}
	for _, tc := range tests {
		got, err := ParseBytes(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Destroy when the job's processes cannot be listed: the failure is
// reported (not taken for "no processes"), the grace period is still
// given, and the container is removed.
func TestDestroyProcListingFails(t *testing.T) {
	e, runner := newTestExecutor(t)
	c, err := e.Create(context.Background(), executors.Spec{RunnerID: runner, JobID: "noproc", Image: testenv.TestImage, Pull: executors.PullNever})
	if err != nil {
		t.Fatal(err)
	}
	procRoot = t.TempDir() + "/missing"
	t.Cleanup(func() { procRoot = "/proc" })
	err = c.Destroy(context.Background())
	if err == nil || !strings.Contains(err.Error(), "listing processes") {
		t.Errorf("Destroy = %v, want the process listing error", err)
	}
	procRoot = "/proc"
	if left, _ := e.Leftovers(context.Background(), runner); len(left) != 0 {
		t.Errorf("container left after Destroy: %v", left)
	}
}

// With ReadOnly the writable tmpfs mounts have the configured sizes: a
// job cannot fill the host's disk through them.
func TestReadOnlySizes(t *testing.T) {
	e, runner := newTestExecutor(t)
	c, err := e.Create(context.Background(), executors.Spec{
		RunnerID: runner, JobID: "sizes", Image: testenv.TestImage, Pull: executors.PullNever, WorkDir: "/builds",
		Limits: executors.Limits{ReadOnly: true, TmpSize: 8 << 20, WorkDirSize: 16 << 20},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Destroy(context.Background()) })
	for _, tc := range []struct {
		path   string
		fits   int
		exceed int
	}{{"/tmp", 4 << 20, 12 << 20}, {"/builds", 12 << 20, 20 << 20}} {
		for _, n := range []int{tc.fits, tc.exceed} {
			var errOut syncBuffer
			code, err := c.Exec(context.Background(), executors.Exec{
				Cmd: []string{"/bin/sh", "-c", "rm -f " + tc.path + "/f; head -c " + strconv.Itoa(n) + " /dev/zero > " + tc.path + "/f"}, Stderr: &errOut,
			})
			if err != nil {
				t.Fatal(err)
			}
			if (code == 0) != (n == tc.fits) {
				t.Errorf("writing %d bytes to %s exited %d (%s), want success only within the size", n, tc.path, code, errOut.String())
			}
		}
	}
}

func TestConfigLimits(t *testing.T) {
	c := Config{ReadOnly: true, WorkDirSize: "2g", TmpSize: "256m"}
	if errs := c.Validate("docker"); len(errs) > 0 {
		t.Fatalf("Validate: %v", errs)
	}
	if got := c.Limits(); !got.ReadOnly || got.WorkDirSize != 2<<30 || got.TmpSize != 256<<20 {
		t.Errorf("Limits() = %+v", got)
	}
	if errs := (Config{ShmSize: "1g", Memory: "1g"}).Validate("docker"); len(errs) > 0 {
		t.Errorf("shm_size = memory: %v", errs)
	}
	bad := Config{TmpSize: "lots", WorkDirSize: "1g", ShmSize: "3g"}
	errs := fmt.Sprint(bad.Validate("docker"))
	for _, want := range []string{"docker.tmp_size", "docker.work_dir_size: applies only with docker.read_only",
		"docker.shm_size 3g: more than the containers' memory limit"} {
		if !strings.Contains(errs, want) {
			t.Errorf("Validate errors %s lack %q", errs, want)
		}
	}
}

// The job container gets a network namespace of its own that the engine
// leaves alone: not the host's, only lo in it (up), the sysctls applied,
// no libnetwork sandbox (whose set-up re-executes dockerd twice per
// start) — and localhost resolves from the executor's /etc/hosts, or
// from the job's own when its mounts bring one.
func TestCreateOwnNetworkNamespace(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "netns").(*Container)
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(c.NetNS()); err != nil || got == host {
		t.Errorf("job namespace %s = %q (%v), want one other than the host's %q", c.NetNS(), got, err, host)
	}
	info, err := e.cli.ContainerInspect(context.Background(), c.ID())
	if err != nil {
		t.Fatal(err)
	}
	if info.NetworkSettings != nil && info.NetworkSettings.SandboxKey != "" {
		t.Errorf("the engine made a network sandbox for the job: %s", info.NetworkSettings.SandboxKey)
	}
	code, out, stderr := shOut(t, c, "", "ls /sys/class/net; cat /sys/class/net/lo/operstate /proc/sys/net/ipv6/conf/all/disable_ipv6; cat /etc/hosts")
	if want := "lo\nunknown\n1\n" + executors.LocalhostLines; code != 0 || out != want {
		t.Errorf("in the job: exit %d, stdout %q (stderr %q), want %q", code, out, stderr, want)
	}
	if code, out, _ := shOut(t, c, "", "echo x > /etc/hosts"); code == 0 {
		t.Errorf("the job could write /etc/hosts (%q)", out)
	}

	own := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(own, []byte("127.0.0.1\tlocalhost db\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	c2, err := e.Create(context.Background(), executors.Spec{RunnerID: runner, JobID: "netns-own-hosts",
		Image: testenv.TestImage, Pull: executors.PullNever, Mounts: []executors.Mount{{Source: own, Target: "/etc/hosts"}}})
	if err != nil {
		t.Fatalf("Create with an /etc/hosts mount: %v", err)
	}
	defer c2.Destroy(context.Background())
	if _, out, _ := shOut(t, c2, "", "cat /etc/hosts"); out != "127.0.0.1\tlocalhost db\n" {
		t.Errorf("with the job's own /etc/hosts mounted: %q", out)
	}
}

// Destroy of a container whose idle entrypoint already died never signals
// the pid it had: the host may have given that pid to another process.
// The test hands it to one of its own (through ns_last_pid) and checks
// that Destroy leaves it alone.
func TestDestroySparesReusedIdlePID(t *testing.T) {
	testenv.RequireRoot(t)
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "reused-pid").(*Container)
	idle := c.idle
	// The idle entrypoint dies (and with it the container).
	if err := syscall.Kill(idle, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := os.Stat(fmt.Sprintf("/proc/%d", idle)); return err != nil })

	var victim *exec.Cmd
	for range 200 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(idle-1)), 0o644); err != nil {
			t.Fatalf("setting ns_last_pid: %v", err)
		}
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == idle {
			victim = cmd
			break
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	if victim == nil {
		t.Fatalf("could not get pid %d again for a process of the test (the host keeps taking it)", idle)
	}
	exited := make(chan error, 1)
	go func() { exited <- victim.Wait() }()
	defer func() { _ = victim.Process.Kill() }()

	if err := c.Destroy(context.Background()); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	select {
	case err := <-exited:
		t.Errorf("the process that got the dead idle entrypoint's pid %d ended (%v) when the container was destroyed", idle, err)
	case <-time.After(500 * time.Millisecond):
	}
}

// The check Create makes of the namespace the engine gave the container.
func TestOwnNetNS(t *testing.T) {
	testenv.RequireRoot(t)
	if err := ownNetNS(os.Getpid()); err == nil || !strings.Contains(err.Error(), "host's network namespace") {
		t.Errorf("ownNetNS(the test, in the host's namespace) = %v, want the host's namespace refused", err)
	}
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "own-netns").(*Container)
	if err := ownNetNS(c.pid); err != nil {
		t.Errorf("ownNetNS(a job container) = %v", err)
	}
}

// ImageID names the local image a reference names now, and a container
// reports the image it was made from: a name retagged to another image
// shows the other's ID, the container keeps its own.
func TestImageID(t *testing.T) {
	e, runner := newTestExecutor(t)
	ctx := context.Background()
	c := create(t, e, runner, "image-id").(executors.ImageReporter)
	id, err := e.ImageID(ctx, testenv.TestImage)
	if err != nil || id == "" || id != c.ImageID() {
		t.Fatalf("ImageID() = %q, %v; the container's is %q", id, err, c.ImageID())
	}
	name := testenv.VariantImage(t, "AIRLOCK_VARIANT=1")
	vid, err := e.ImageID(ctx, name)
	if err != nil || vid == id {
		t.Fatalf("ImageID(variant) = %q, %v; the test image's is %q", vid, err, id)
	}
	if out, err := exec.Command("docker", "tag", testenv.TestImage, name).CombinedOutput(); err != nil {
		t.Fatalf("docker tag: %v: %s", err, out)
	}
	if got, err := e.ImageID(ctx, name); err != nil || got != id {
		t.Errorf("ImageID() of a name retagged to the test image = %q, %v; want %q", got, err, id)
	}
	if _, err := e.ImageID(ctx, "airlock-test:no-such-image"); !errors.Is(err, executors.ErrImageNotFound) {
		t.Errorf("ImageID(missing) = %v, want ErrImageNotFound", err)
	}
}
