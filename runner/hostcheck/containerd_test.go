package hostcheck

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/executors/containerd"
	"github.com/airlock-ci/airlock/internal/testenv"
)

func TestCheckContainerdRealDaemon(t *testing.T) {
	testenv.RequireContainerd(t)
	e := NewEnv()
	cfg := containerd.Config{Address: testenv.ContainerdSocket(), Namespace: "airlock-doctor-unused"}
	rs := checkContainerd(context.Background(), e, cfg, true)
	if len(rs) != 4 {
		t.Fatalf("checkContainerd returned %d results (%+v), want 4", len(rs), rs)
	}
	wantResult(t, rs[0], OK, "containerd ", "")
	wantResult(t, rs[1], OK, "does not exist yet", "")
	wantResult(t, rs[2], OK, "snapshotter overlayfs loaded", "")
	wantResult(t, rs[3], OK, "runtime io.containerd.runc.v2", "")

	cfg.Snapshotter = "nosuchsnap"
	cfg.Namespace = "moby"
	rs = checkContainerd(context.Background(), e, cfg, true)
	wantResult(t, rs[1], Warn, `"moby" is Docker's`, "namespace")
	wantResult(t, rs[2], Fail, `no snapshotter "nosuchsnap"`, "[containerd] snapshotter")
}

func TestCheckContainerdProblems(t *testing.T) {
	dir := t.TempDir()
	cfg := containerd.Config{Address: filepath.Join(dir, "nobody.sock")}
	e := &Env{Cmd: &fakeCmd{}}
	rs := checkContainerd(context.Background(), e, cfg, true)
	if len(rs) != 1 {
		t.Fatalf("results %+v, want one", rs)
	}
	wantResult(t, rs[0], Fail, "no socket at "+cfg.Address, "[containerd] address")
	// Not the selected executor: the same problem is information only.
	rs = checkContainerd(context.Background(), e, cfg, false)
	if len(rs) != 1 {
		t.Fatalf("results %+v, want one", rs)
	}
	wantResult(t, rs[0], Info, "not used (executor = docker); no socket", "[containerd] address")

	// A socket nobody serves.
	if err := os.WriteFile(cfg.Address, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rs = checkContainerd(context.Background(), e, cfg, true)
	wantResult(t, rs[0], Fail, "does not answer", "systemctl start containerd")

	for _, tc := range []struct {
		runtime string
		paths   map[string]bool
		status  Status
		detail  string
	}{
		{"", map[string]bool{"containerd-shim-runc-v2": true, "runc": true}, OK, "/usr/sbin/containerd-shim-runc-v2"},
		{"", map[string]bool{"runc": true}, Fail, "no containerd-shim-runc-v2 in PATH"},
		{"io.containerd.runc.v2", map[string]bool{"containerd-shim-runc-v2": true}, Fail, "no runc"},
		{"runsc", nil, Fail, "not a shim name"},
	} {
		r := checkContainerdRuntime(&Env{Cmd: &fakeCmd{paths: tc.paths}}, tc.runtime)
		if r.Status != tc.status || !strings.Contains(r.Detail, tc.detail) {
			t.Errorf("runtime %q with %v: %s %q, want %s containing %q", tc.runtime, tc.paths, r.Status, r.Detail, tc.status, tc.detail)
		}
	}
}
