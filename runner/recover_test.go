package runner

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/airlock-ci/airlock/internal/procs"
)

// Runtime directories appear with their owner file in place, and recovery
// removes only those whose owner process is gone.
func TestRuntimeDirRecovery(t *testing.T) {
	rt := t.TempDir()
	r, err := New(Config{RunnerID: "rtest01", RuntimeDir: rt}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	live, err := r.makeRuntimeDir("live")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.makeRuntimeDir("live"); err == nil {
		t.Errorf("makeRuntimeDir of an existing job succeeded, want an error")
	}
	dead := filepath.Join(rt, "jobs", "rtest01-dead")
	partialDead := filepath.Join(rt, "jobs", ".new-123")
	other := filepath.Join(rt, "jobs", "rother1-dead")
	gone := procs.Owner{PID: 1 << 22, Start: 1} // no such process
	for _, d := range []string{dead, partialDead, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, ownerFile), []byte(gone.String()), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	found := map[string]bool{}
	if err := r.sweepRuntime(func(id string) *Recovered { found[id] = true; return &Recovered{JobID: id} }); err != nil {
		t.Fatalf("sweepRuntime: %v", err)
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if !exists(live) {
		t.Errorf("the live job's runtime directory was removed")
	}
	if exists(dead) || exists(partialDead) {
		t.Errorf("a dead process's runtime directories were left: %v %v", exists(dead), exists(partialDead))
	}
	if !exists(other) {
		t.Errorf("another runner's runtime directory was removed")
	}
	if !found["dead"] || found["live"] || len(found) != 1 {
		t.Errorf("recovered jobs = %v, want only dead", found)
	}
}
