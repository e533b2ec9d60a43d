package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// A job namespace created before anything runs in it can be plumbed and
// firewalled by Setup, and is gone with its owner record after
// DeleteNetNS; deleting it again is no error.
func TestCreateNetNSSetupDelete(t *testing.T) {
	testenv.RequireRoot(t)
	poolFile := filepath.Join(t.TempDir(), "netpool.json")
	m := newManager(t, uniqueRunnerID(), poolFile)
	path, err := m.CreateNetNS("job-ns")
	if err != nil {
		t.Fatalf("CreateNetNS: %v", err)
	}
	t.Cleanup(func() { _ = m.DeleteNetNS("job-ns") })
	if want := filepath.Join(NetNSDir, NetNSName(m.cfg.RunnerID, "job-ns")); path != want {
		t.Fatalf("path = %s, want %s", path, want)
	}
	var host, job syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &host); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(path, &job); err != nil {
		t.Fatal(err)
	}
	if host.Ino == job.Ino {
		t.Fatal("the job namespace is the host's")
	}
	// The creating thread went back: this goroutine's namespace is the host's.
	if _, err := m.CreateNetNS("job-ns"); err == nil {
		t.Fatal("second CreateNetNS of one job succeeded")
	}
	n, err := m.Setup(context.Background(), "job-ns", path)
	if err != nil {
		t.Fatalf("Setup in the created namespace: %v", err)
	}
	if err := n.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteNetNS("job-ns"); err != nil {
		t.Fatalf("DeleteNetNS: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("namespace file still there: %v", err)
	}
	if ents, _ := os.ReadDir(m.ownerDir()); len(ents) != 0 {
		t.Fatalf("owner records left: %v", ents)
	}
	if err := m.DeleteNetNS("job-ns"); err != nil {
		t.Fatalf("second DeleteNetNS: %v", err)
	}
}

// Sweep takes the namespaces of this runner's dead owners, and neither a
// live owner's nor another runner's.
func TestSweepRemovesDeadOwnersNetNS(t *testing.T) {
	testenv.RequireRoot(t)
	poolFile := filepath.Join(t.TempDir(), "netpool.json")
	runnerA, runnerB := uniqueRunnerID(), uniqueRunnerID()
	mA := newManager(t, runnerA, poolFile)
	mB := newManager(t, runnerB, poolFile)
	live, err := mA.CreateNetNS("job-live")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mA.DeleteNetNS("job-live") })
	other, err := mB.CreateNetNS("job-dead")
	if err != nil {
		t.Fatal(err)
	}
	dead, err := mA.CreateNetNS("job-dead")
	if err != nil {
		t.Fatal(err)
	}
	// Its owner died: a pid that does not exist (start time 1).
	for _, m := range []*Manager{mA, mB} {
		rec := filepath.Join(m.ownerDir(), NetNSName(m.cfg.RunnerID, "job-dead"))
		if err := os.WriteFile(rec, []byte("999999999:1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = mB.DeleteNetNS("job-dead") })
	if err := mA.Sweep(context.Background()); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	for path, want := range map[string]bool{live: true, other: true, dead: false} {
		_, err := os.Stat(path)
		if got := err == nil; got != want {
			t.Errorf("after runner A's sweep %s exists = %t, want %t", path, got, want)
		}
	}
	if err := mB.Sweep(context.Background()); err != nil {
		t.Fatalf("Sweep B: %v", err)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("runner B's sweep left its dead namespace %s", other)
	}
	ents, _ := os.ReadDir(mA.ownerDir())
	for _, e := range ents {
		if !strings.HasSuffix(live, e.Name()) {
			t.Errorf("owner record %s left", e.Name())
		}
	}
}
