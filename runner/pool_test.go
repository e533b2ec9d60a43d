package runner

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// Environment of the child TestPoolRecoveredAfterSIGKILL starts.
const (
	poolChildEnv  = "AIRLOCK_TEST_POOL_CHILD"
	poolConfigEnv = "AIRLOCK_TEST_POOL_CONFIG"
	poolReadyEnv  = "AIRLOCK_TEST_POOL_READY"
)

// TestPoolCrashChild is the child of TestPoolRecoveredAfterSIGKILL: it
// keeps two warm sandboxes until it is killed.
func TestPoolCrashChild(t *testing.T) {
	if os.Getenv(poolChildEnv) != "1" {
		return // only as the child of TestPoolRecoveredAfterSIGKILL
	}
	cfg, err := config.Load(os.Getenv(poolConfigEnv), false)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := openWired(ctx, cfg, isoLogger())
	if err != nil {
		t.Fatal(err)
	}
	// And two namespaces plumbed for cold jobs.
	pc := PoolConfig{Sizes: map[string]int{testenv.TestImage: 2}, Networks: 2}
	p, err := r.StartPool(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv(poolReadyEnv), []byte("ready"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {} // until SIGKILL
}

func TestPoolRecoveredAfterSIGKILL(t *testing.T) { isoEachExecutor(t, testPoolRecoveredAfterSIGKILL) }

func testPoolRecoveredAfterSIGKILL(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	fake := testenv.NewFakeInternet(t)
	cfg := isoConfig(t, fake)
	ready := filepath.Join(t.TempDir(), "ready")
	var out bytes.Buffer
	child := exec.Command(os.Args[0], "-test.run=^TestPoolCrashChild$", "-test.count=1")
	child.Env = append(os.Environ(), poolChildEnv+"=1", poolConfigEnv+"="+cfg.Path(), poolReadyEnv+"="+ready)
	child.Stdout, child.Stderr = &out, &out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			child.Process.Kill()
			child.Wait()
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child's pool never got ready:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, "runner_id"))
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(b))
	left := strings.Join(isoLeftovers(t, id, cfg), "\n")
	// And the two pooled networks' addresses, and their namespaces
	// (containerd) or holders (Docker).
	kinds := map[string]int{"container ": 4, "pool entry ": 4, "runtime directory ": 2, "ip: ": 2}
	if cfg.ExecutorName() == config.ExecutorContainerd {
		kinds["network namespace "], kinds["container "] = 2, 2
	}
	for want, n := range kinds {
		if strings.Count(left, want) < n {
			t.Fatalf("the child's warm sandboxes are not all visible as %q (want %d):\n%s", want, n, left)
		}
	}
	if err := child.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	child.Wait()
	killed = true

	// The next start recovers: nothing of the pool is left.
	ctx := context.Background()
	r, err := openWired(ctx, cfg, isoLogger())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Recover(ctx); err != nil {
		t.Errorf("Recover() error = %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close() error = %v", err)
	}
	isoAssertNothingLeft(t, id, cfg)
}

// TestPoolColdAndWarm runs jobs through a pool: a job of a pooled image
// claims a warm sandbox (and sees its own identity, not the sandbox's),
// the pool refills, a job of another image runs cold, and closing the
// runner removes the unclaimed sandboxes.
func TestPoolColdAndWarm(t *testing.T) { isoEachExecutor(t, testPoolColdAndWarm) }

func testPoolColdAndWarm(t *testing.T) {
	env := isoOpen(t)
	p := isoStartPool(t, env)
	j := &job.Job{ID: "warm-1", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute,
		Variables: []job.Variable{{Key: "GREETING", Value: "hello from a file", File: true}},
		Steps:     []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{`echo "job=$CI_JOB_ID"`, `cat "$GREETING"`, `grep -c nameserver /etc/resolv.conf`}}}}
	var out bytes.Buffer
	res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
	if err != nil || res.State != Success {
		t.Fatalf("warm job: %v, %+v\n%s", err, res, out.String())
	}
	for _, want := range []string{"job=warm-1", "hello from a file", "\n1\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("warm job output lacks %q:\n%s", want, out.String())
		}
	}
	if st := p.Stats(); st.Hits != 1 {
		t.Errorf("pool stats = %+v, want 1 hit", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Errorf("the pool did not refill: %v", err)
	}
	// An image the pool does not keep runs cold.
	cold := *j
	cold.ID, cold.Image = "cold-1", testenv.TestImage+"-not-pooled"
	res, _ = env.r.Run(context.Background(), &cold, RunOptions{Out: &out})
	if res.Reason != ImagePullFailure {
		t.Errorf("a job of an image the pool does not keep: %+v, want the cold path's image pull failure", res)
	}
	if st := p.Stats(); st.Hits != 1 || st.Misses != 0 {
		t.Errorf("pool stats after a job of another image = %+v, want it untouched", st)
	}
}
