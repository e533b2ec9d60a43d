package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
)

// testExecutable is a real executable for ExecStart= (systemd-analyze
// verify checks that it exists): the test binary itself.
func testExecutable(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable: %v", err)
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		t.Fatalf("EvalSymlinks: %v", err)
	}
	return p
}

func renderString(t *testing.T, d unitData) string {
	t.Helper()
	var buf bytes.Buffer
	if err := renderUnit(&buf, d); err != nil {
		t.Fatalf("renderUnit: %v", err)
	}
	return buf.String()
}

// unitDirectives returns the unit's key=value lines (comments dropped).
func unitDirectives(unit string) map[string][]string {
	m := map[string][]string{}
	for _, l := range strings.Split(unit, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") {
			continue
		}
		k, v, _ := strings.Cut(l, "=")
		m[k] = append(m[k], v)
	}
	return m
}

func TestUnitVerifies(t *testing.T) {
	analyze := testenv.RequireSystemdAnalyze(t)
	exe := testExecutable(t)
	tests := []struct {
		name   string
		mutate func(*config.Config)
	}{
		{"defaults", func(*config.Config) {}},
		{"custom dirs", func(c *config.Config) {
			c.StateDir = "/srv/airlock/state"
			c.RuntimeDir = "/run/airlock-ci/jobs"
			c.ShutdownTimeout = 0
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Defaults()
			tc.mutate(cfg)
			cfgPath := filepath.Join(t.TempDir(), "config.toml")
			if err := cfg.Save(cfgPath); err != nil {
				t.Fatalf("Save: %v", err)
			}
			loaded, err := config.Load(cfgPath, false)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			d, err := newUnitData(loaded, exe, cfgPath)
			if err != nil {
				t.Fatalf("newUnitData: %v", err)
			}
			unitPath := filepath.Join(t.TempDir(), unitName)
			if err := os.WriteFile(unitPath, []byte(renderString(t, d)), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(analyze, "verify", "--man=no", unitPath)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err = cmd.Run()
			if err != nil || stderr.Len() > 0 {
				t.Errorf("systemd-analyze verify %s: err=%v\nstderr:\n%s\nstdout:\n%s", unitPath, err, stderr.String(), stdout.String())
			}
		})
	}
}

func TestUnitSettings(t *testing.T) {
	tests := []struct {
		name     string
		cfg      func(*config.Config)
		wantStop string
		want     map[string]string
		absent   []string
	}{
		{
			name:     "defaults",
			cfg:      func(*config.Config) {},
			wantStop: "1900", // 30m + 10s grace + 90s
			want: map[string]string{
				"ExecStart":                "/usr/local/bin/airlock run --config /etc/airlock/config.toml",
				"StateDirectory":           "airlock",
				"RuntimeDirectory":         "airlock",
				"RuntimeDirectoryPreserve": "yes",
				"ConfigurationDirectory":   "airlock",
				"KillMode":                 "mixed",
				"Restart":                  "on-failure",
				"After":                    "network-online.target docker.service",
				"UMask":                    "0022",         // job containers read per-job files
				"ReadWritePaths":           "/etc/airlock", // rotated runner tokens are saved
			},
			absent: []string{"PrivateNetwork", "ProtectKernelTunables"},
		},
		{
			name: "short shutdown and grace",
			cfg: func(c *config.Config) {
				c.ShutdownTimeout = 2 * time.Minute
				c.Docker.Grace = 30 * time.Second
			},
			wantStop: "240",
		},
		{
			name: "sub-second shutdown rounds up",
			cfg: func(c *config.Config) {
				c.ShutdownTimeout = 1500 * time.Millisecond
			},
			wantStop: "102", // 1.5s + 10s + 90s = 101.5s
		},
		{
			name: "dirs outside systemd's",
			cfg: func(c *config.Config) {
				c.StateDir = "/srv/airlock"
				c.RuntimeDir = "/dev/shm/airlock"
			},
			wantStop: "1900",
			want:     map[string]string{"ReadWritePaths": "/srv/airlock /dev/shm/airlock /etc/airlock"},
			absent:   []string{"StateDirectory", "RuntimeDirectory"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Defaults()
			tc.cfg(cfg)
			d, err := newUnitData(cfg, "/usr/local/bin/airlock", config.DefaultPath)
			if err != nil {
				t.Fatalf("newUnitData: %v", err)
			}
			got := unitDirectives(renderString(t, d))
			if v := got["TimeoutStopSec"]; !reflect.DeepEqual(v, []string{tc.wantStop}) {
				t.Errorf("TimeoutStopSec = %q, want %q", v, tc.wantStop)
			}
			for k, want := range tc.want {
				if v := got[k]; !reflect.DeepEqual(v, []string{want}) {
					t.Errorf("%s = %q, want %q", k, v, want)
				}
			}
			for _, k := range tc.absent {
				if v, ok := got[k]; ok {
					t.Errorf("%s = %q, want it absent", k, v)
				}
			}
		})
	}
}

func TestNewUnitDataRejectsBadPaths(t *testing.T) {
	for _, p := range []string{"relative/airlock", "/opt/my airlock", "/opt/a;b"} {
		if _, err := newUnitData(config.Defaults(), p, config.DefaultPath); err == nil {
			t.Errorf("newUnitData(exec %q) succeeded, want an error", p)
		}
	}
}

// recordingHost is a serviceHost whose systemctl records its calls.
type recordingHost struct {
	calls [][]string
	out   bytes.Buffer
}

func (r *recordingHost) host(systemdDir string) serviceHost {
	return serviceHost{
		systemdDir: systemdDir,
		systemctl: func(_ context.Context, args ...string) error {
			r.calls = append(r.calls, args)
			return nil
		},
		out: &r.out,
	}
}

func TestInstallUninstall(t *testing.T) {
	d, err := newUnitData(config.Defaults(), "/usr/local/bin/airlock", config.DefaultPath)
	if err != nil {
		t.Fatal(err)
	}
	running := t.TempDir() // stands for /run/systemd/system
	tests := []struct {
		name       string
		systemdDir string
		opts       serviceOptions
		wantCalls  [][]string
		wantOut    string
	}{
		{"systemd, enable and start", running, serviceOptions{enable: true, start: true},
			[][]string{{"daemon-reload"}, {"enable", unitName}, {"restart", unitName}}, "started"},
		{"systemd, install only", running, serviceOptions{},
			[][]string{{"daemon-reload"}}, "wrote"},
		{"no systemd", filepath.Join(running, "missing"), serviceOptions{enable: true, start: true},
			nil, "systemd is not running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r recordingHost
			tc.opts.unitDir = filepath.Join(t.TempDir(), "system")
			if err := installService(context.Background(), r.host(tc.systemdDir), tc.opts, d); err != nil {
				t.Fatalf("installService: %v", err)
			}
			if !reflect.DeepEqual(r.calls, tc.wantCalls) {
				t.Errorf("systemctl calls = %q, want %q", r.calls, tc.wantCalls)
			}
			if !strings.Contains(r.out.String(), tc.wantOut) {
				t.Errorf("output = %q, want it to contain %q", r.out.String(), tc.wantOut)
			}
			path := filepath.Join(tc.opts.unitDir, unitName)
			st, err := os.Stat(path)
			if err != nil {
				t.Fatalf("unit not written: %v", err)
			}
			if st.Mode().Perm() != 0o644 {
				t.Errorf("unit mode = %04o, want 0644", st.Mode().Perm())
			}
			b, _ := os.ReadFile(path)
			if want := renderString(t, d); string(b) != want {
				t.Errorf("unit file differs from the rendered unit")
			}

			r.calls = nil
			if err := uninstallService(context.Background(), r.host(tc.systemdDir), tc.opts); err != nil {
				t.Fatalf("uninstallService: %v", err)
			}
			var wantCalls [][]string
			if tc.systemdDir == running {
				wantCalls = [][]string{{"stop", unitName}, {"disable", unitName}, {"daemon-reload"}}
			}
			if !reflect.DeepEqual(r.calls, wantCalls) {
				t.Errorf("uninstall systemctl calls = %q, want %q", r.calls, wantCalls)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("unit still present after uninstall: %v", err)
			}
			entries, _ := os.ReadDir(tc.opts.unitDir)
			if len(entries) != 0 {
				t.Errorf("unit dir not empty after uninstall: %v", entries)
			}
			// Uninstalling again is not an error.
			if err := uninstallService(context.Background(), r.host(tc.systemdDir), tc.opts); err != nil {
				t.Errorf("second uninstallService: %v", err)
			}
		})
	}
}

// TestServiceUnitCommand renders through the CLI: --config, --state-dir
// and --binary reach the unit.
func TestServiceUnitCommand(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte("shutdown_timeout = \"5m\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"service", "unit", "--config", cfgPath, "--state-dir", "/srv/airlock-state", "--binary", "/usr/local/bin/airlock"})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("service unit: %v\n%s", err, errOut.String())
	}
	got := unitDirectives(out.String())
	want := map[string]string{
		"ExecStart":      "/usr/local/bin/airlock run --config " + cfgPath + " --state-dir /srv/airlock-state",
		"ReadWritePaths": "/srv/airlock-state " + dir,
		"TimeoutStopSec": "400", // 5m + 10s + 90s
	}
	for k, w := range want {
		if v := got[k]; !reflect.DeepEqual(v, []string{w}) {
			t.Errorf("%s = %q, want %q", k, v, w)
		}
	}
	if _, ok := got["StateDirectory"]; ok {
		t.Errorf("StateDirectory set for a state dir outside /var/lib")
	}
	if _, ok := got["ConfigurationDirectory"]; ok {
		t.Errorf("ConfigurationDirectory set for a configuration outside /etc")
	}
}
