package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/runner/hostcheck"
)

func TestPrintResults(t *testing.T) {
	rs := []hostcheck.Result{
		{Name: "root", Status: hostcheck.OK, Detail: "running as root"},
		{Name: "test image", Status: hostcheck.Info, Detail: "missing", Fix: "make testimage"},
		{Name: "clock", Status: hostcheck.Warn, Detail: "not synchronized", Fix: "timedatectl set-ntp true"},
		{Name: "iptables backend", Status: hostcheck.Fail, Detail: "legacy vs nf_tables", Fix: "update-alternatives"},
	}
	var buf bytes.Buffer
	if err := printResults(&buf, rs); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"OK    root                running as root",
		"INFO  test image          missing — fix: make testimage",
		"WARN  clock               not synchronized — fix: timedatectl set-ntp true",
		"FAIL  iptables backend    legacy vs nf_tables — fix: update-alternatives",
		"4 checks: 1 failed, 1 warnings",
	}
	got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("printResults printed %d lines, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %q, want %q", i, got[i], want[i])
		}
	}
}

// TestDoctorFailsOnBadConfig runs the real command: whatever the host, a
// configuration that does not validate is a FAIL and the exit status 1.
func TestDoctorFailsOnBadConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte("concurrent = 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"doctor", "--config", cfg})
	err := root.ExecuteContext(context.Background())
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("doctor = %v, want exit status 1\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "FAIL  config") || !strings.Contains(out.String(), "concurrent: must be at least 1") {
		t.Errorf("doctor output lacks the config failure:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "checks: ") {
		t.Errorf("doctor output lacks the summary:\n%s", out.String())
	}
}

// doctor checks the mode of every key file, the CA key and the agent's
// journal key included.
func TestDoctorChecksEveryKeyFile(t *testing.T) {
	state := t.TempDir()
	if err := os.Chmod(state, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ca-key.pem", "agent-jobs.key"} {
		if err := os.WriteFile(filepath.Join(state, name), []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"doctor", "--config", filepath.Join(t.TempDir(), "none.toml"), "--state-dir", state})
	_ = root.ExecuteContext(context.Background())
	for _, name := range []string{"ca-key.pem", "agent-jobs.key"} {
		found := false
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.Contains(line, name) && strings.HasPrefix(line, "FAIL") && strings.Contains(line, "0644") {
				found = true
			}
		}
		if !found {
			t.Errorf("doctor does not fail %s with mode 0644:\n%s", name, out.String())
		}
	}
}

// doctor says how Docker steps run: a dynamically linked step_server is a
// failure naming the setting; "off" is information; none beside the
// binary is a warning with the fix.
func TestDoctorStepServer(t *testing.T) {
	for _, tc := range []struct{ config, prefix, want string }{
		{"[docker]\nstep_server = \"/bin/sh\"\n", "FAIL  docker step server", "docker.step_server"},
		{"[docker]\nstep_server = \"off\"\n", "INFO  docker step server", "engine exec"},
		{"[docker]\nstep_server = \"\"\n", "WARN  docker step server", "install airlock-stepd next to airlock"},
		// The executor the configuration selects is the one checked.
		{"executor = \"containerd\"\n[docker]\nstep_server = \"/bin/sh\"\n[containerd]\nstep_server = \"off\"\n", "INFO  containerd step server", "engine exec"},
		{"executor = \"containerd\"\n[containerd]\nstep_server = \"/bin/sh\"\n", "FAIL  containerd step server", "containerd.step_server"},
	} {
		cfg := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(cfg, []byte(tc.config), 0o600); err != nil {
			t.Fatal(err)
		}
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs([]string{"doctor", "--config", cfg, "--state-dir", t.TempDir()})
		_ = root.ExecuteContext(context.Background())
		found := false
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(line, tc.prefix) && strings.Contains(line, tc.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("config %q: no line %q … %q in:\n%s", tc.config, tc.prefix, tc.want, out.String())
		}
	}
}
