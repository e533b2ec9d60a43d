package runner

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// crashRunnerEnv names the configuration file of the child runner that
// TestRecoverAfterSIGKILL starts.
const crashRunnerEnv = "AIRLOCK_TEST_CRASH_RUNNER_CONFIG"

// crashSiblingEnv makes the child's long step run in a container of its
// own beside the job's (job.ContainerStepHost).
const crashSiblingEnv = "AIRLOCK_TEST_CRASH_SIBLING"

// TestCrashRunnerChild is the child of TestRecoverAfterSIGKILL: a runner
// built by Open from the configuration file runs one long job until the
// parent kills it. It does nothing unless started so.
func TestCrashRunnerChild(t *testing.T) {
	path := os.Getenv(crashRunnerEnv)
	if path == "" {
		return
	}
	cfg, err := config.Load(path, false)
	if err != nil {
		t.Fatal(err)
	}
	r, err := openWired(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	j := &job.Job{ID: "crash-1", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: 5 * time.Minute,
		Steps: []job.Step{{Name: "long", Script: []string{"echo started", "sleep 300"}, When: job.OnSuccess}}}
	opts := RunOptions{Out: os.Stdout}
	if os.Getenv(crashSiblingEnv) != "" {
		opts.Driver = &siblingDriver{x: job.ContainerExec{Name: "long", Image: testenv.TestImage,
			Entrypoint: []string{"/bin/sh"}, Args: []string{"-c", "echo started; sleep 300"}, Root: "/github", WorkDir: "/github"}}
	}
	_, _ = r.Run(context.Background(), j, opts) // until SIGKILL
}

// A runner killed with SIGKILL in the middle of a job leaves its
// container (task, snapshot, cgroups), network namespace, veth, firewall
// rules, pool entry and runtime directory; the next start's Recover
// removes every one of them and seals the job's trail.
func TestRecoverAfterSIGKILL(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) { testRecoverAfterSIGKILL(t, false) })
}

// The same with the job inside a step's own container (a GitHub Docker
// action): both containers are found and removed.
func TestRecoverSiblingAfterSIGKILL(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) { testRecoverAfterSIGKILL(t, true) })
}

func testRecoverAfterSIGKILL(t *testing.T, sibling bool) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.RuntimeDir = t.TempDir()
	cfg.Gateway.HostsOnly = true
	cfg.Docker.Pull = string(executors.PullNever)
	cfg.Docker.Grace = time.Second
	cfg.Docker.StepServer = testenv.StepServer(t)
	if isoExecutor(t) == config.ExecutorContainerd {
		cfg.Executor = config.ExecutorContainerd
		cfg.Containerd.Address = testenv.ContainerdSocket()
		cfg.Containerd.Namespace = testenv.ContainerdNamespace(t)
		cfg.Containerd.Pull = string(executors.PullNever)
		cfg.Containerd.Grace = time.Second
		cfg.Containerd.StepServer = testenv.StepServer(t)
	}
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	runnerID, err := LoadOrCreateID(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}

	child := exec.Command(os.Args[0], "-test.run=^TestCrashRunnerChild$", "-test.count=1")
	child.Env = append(os.Environ(), crashRunnerEnv+"="+path)
	if sibling {
		child.Env = append(child.Env, crashSiblingEnv+"=1")
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	child.Stderr = &stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
	})
	started := make(chan error, 1)
	var childOut strings.Builder // read only after started
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			childOut.WriteString(sc.Text() + "\n")
			if sc.Text() == "started" {
				started <- nil
				for sc.Scan() {
				}
				return
			}
		}
		started <- errors.New("the child's output ended before the job started")
	}()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("%v\nchild output:\n%s%s", err, childOut.String(), stderr.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the child's job did not start")
	}
	running := strings.Join(isoLeftovers(t, runnerID, cfg), "\n")
	want := []string{"container ", "ip: ", "pool entry ", "runtime directory "}
	if cfg.ExecutorName() == config.ExecutorContainerd {
		want = append(want, "network namespace ")
	}
	for _, w := range want {
		if !strings.Contains(running, w) {
			t.Errorf("while the job runs, the leftover check finds no %q; it finds:\n%s", w, running)
		}
	}
	if n := strings.Count(running, "container "); sibling && n < 2 {
		t.Errorf("while the step's own container runs, the leftover check finds %d containers, want the job's and the step's:\n%s", n, running)
	}
	if err := child.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = child.Wait()
	killed = true

	r, err := openWired(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("Open after the crash: %v", err)
	}
	recovered, err := r.Recover(context.Background())
	if cerr := r.Close(); cerr != nil {
		t.Errorf("Close: %v", cerr)
	}
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	var ids []string
	for _, rec := range recovered {
		ids = append(ids, rec.JobID)
	}
	if len(ids) != 1 || ids[0] != "crash-1" {
		t.Errorf("Recover recovered jobs %v, want [crash-1]", ids)
	}
	isoAssertNothingLeft(t, runnerID, cfg)
	// testenv.ContainerdNamespace's cleanup checks the cgroups and leases.
}
