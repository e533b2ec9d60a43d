package containerd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRegistryCredentials(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte("s3cret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &Executor{cfg: Config{Registries: []Registry{
		{Host: "registry.example.test", Username: "ci", PasswordFile: pw},
		{Host: "docker.io", Username: "hub", PasswordFile: pw},
		{Host: "broken.example.test", Username: "x", PasswordFile: filepath.Join(dir, "missing")},
		{Host: "open.example.test", Username: "x", PasswordFile: open},
	}}}
	tests := []struct {
		host, user, pass, err string
	}{
		{host: "registry.example.test", user: "ci", pass: "s3cret"},
		{host: "REGISTRY.example.test", user: "ci", pass: "s3cret"},
		{host: "registry-1.docker.io", user: "hub", pass: "s3cret"},
		{host: "other.example.test"},
		{host: "broken.example.test", err: "reading the password of registry broken.example.test"},
		{host: "open.example.test", err: "readable by others (mode 0644)"},
	}
	for _, tc := range tests {
		u, p, err := e.credentials(tc.host)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("credentials(%q) error = %v, want %q without the password", tc.host, err, tc.err)
			}
			continue
		}
		if err != nil || u != tc.user || p != tc.pass {
			t.Errorf("credentials(%q) = %q, %q, %v; want %q, %q", tc.host, u, p, err, tc.user, tc.pass)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  Config
		want []string
	}{
		{Config{}, nil},
		{Config{Namespace: "airlock-ci.1"}, nil},
		{Config{Namespace: "bad ns"}, []string{"containerd.namespace"}},
		{Config{Pull: "sometimes", PidsLimit: -1, Memory: "lots", CPUs: -1, Grace: -1}, []string{"pull_policy", "pids_limit", "memory", "cpus", "stop_grace"}},
		{Config{Registries: []Registry{{Username: "u"}}}, []string{"registry[0].host", "registry[0]: username and password_file"}},
		{Config{ShmSize: "512m", Memory: "1g"}, nil},
		{Config{ShmSize: "2g", Memory: "1g"}, []string{"containerd.shm_size 2g: more than"}},
		{Config{ShmSize: "none"}, []string{"containerd.shm_size: size \"none\""}},
	}
	for _, tc := range tests {
		errs := tc.cfg.Validate("containerd")
		if len(errs) != len(tc.want) {
			t.Errorf("Validate(%+v) = %v, want %d errors", tc.cfg, errs, len(tc.want))
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(errs[i].Error(), w) {
				t.Errorf("Validate(%+v)[%d] = %v, want it to name %q", tc.cfg, i, errs[i], w)
			}
		}
	}
}

func TestContainerID(t *testing.T) {
	if got := ContainerID("r1234ab", "local-abc"); got != "airlock-r1234ab-local-abc" {
		t.Errorf("ContainerID = %q", got)
	}
	long := ContainerID("r1234ab", strings.Repeat("x", 100)+"/weird id")
	if !strings.HasPrefix(long, IDPrefix("r1234ab")) || len(long) > 76 || !identifier.MatchString(long) {
		t.Errorf("ContainerID of a long odd job id = %q: want a valid id under the runner's prefix", long)
	}
	if ContainerID("r1", "a") == ContainerID("r1", "b") || ContainerID("r1", strings.Repeat("a", 50)) == ContainerID("r1", strings.Repeat("a", 51)) {
		t.Error("ContainerID collides")
	}
}
