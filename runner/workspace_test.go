package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/internal/procs"
)

// The host-side clone lives under the runtime directory (not the host's
// /tmp), in a directory labelled with the runner and job id and its owner
// process, and recovery removes those a dead process left.
func TestWorkspaceDirRecovery(t *testing.T) {
	rt := t.TempDir()
	r, err := New(Config{RunnerID: "rtest01", RuntimeDir: rt}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	src, cleanup, err := r.makeWorkspaceDir("gitlab-1a2b3c4d-7")
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(rt, workspacesDir, "rtest01-gitlab-1a2b3c4d-7", "src")
	if src != want {
		t.Errorf("workspace = %s, want %s", src, want)
	}
	if strings.HasPrefix(src, os.TempDir()+"/airlock-workspace-") {
		t.Errorf("workspace %s is in the host's temporary directory", src)
	}
	if ents, err := os.ReadDir(src); err != nil || len(ents) != 0 {
		t.Errorf("workspace = %v, %v; want an empty directory", ents, err)
	}
	if fi, err := os.Stat(filepath.Join(rt, workspacesDir)); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("workspaces directory: %v, mode %v; want root-only", err, fi.Mode())
	}
	if _, _, err := r.makeWorkspaceDir("gitlab-1a2b3c4d-7"); err == nil {
		t.Errorf("makeWorkspaceDir of a job that has one succeeded, want an error")
	}

	base := filepath.Join(rt, workspacesDir)
	dead := filepath.Join(base, "rtest01-gitlab-1a2b3c4d-8")
	partialDead := filepath.Join(base, ".new-123")
	partialNoOwner := filepath.Join(base, ".new-456")
	other := filepath.Join(base, "rother1-gitlab-1a2b3c4d-8")
	gone := procs.Owner{PID: 1 << 22, Start: 1} // no such process
	for _, d := range []string{dead, partialDead, partialNoOwner, other} {
		if err := os.MkdirAll(filepath.Join(d, "src"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "src", "secret-sources.go"), []byte("package x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if d == partialNoOwner {
			continue
		}
		if err := os.WriteFile(filepath.Join(d, ownerFile), []byte(gone.String()), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.sweepWorkspaces(); err != nil {
		t.Fatalf("sweepWorkspaces: %v", err)
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if !exists(src) {
		t.Errorf("the live job's workspace was removed")
	}
	if exists(dead) || exists(partialDead) {
		t.Errorf("a dead process's workspaces were left: %v %v", exists(dead), exists(partialDead))
	}
	if !exists(other) || !exists(partialNoOwner) {
		t.Errorf("another runner's workspace or one being created was removed: %v %v", exists(other), exists(partialNoOwner))
	}
	cleanup()
	if exists(filepath.Dir(src)) {
		t.Errorf("cleanup left %s", filepath.Dir(src))
	}
}
