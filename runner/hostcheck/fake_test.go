package hostcheck

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// fakeCmd is a recording Commander (in the style of tailscale's fakeOS):
// LookPath finds the names in paths, Output answers from outs by the
// command line, and every call is recorded.
type fakeCmd struct {
	paths map[string]bool
	outs  map[string]fakeOut
	calls []string
}

type fakeOut struct {
	out string
	err error
}

func (f *fakeCmd) LookPath(file string) (string, error) {
	if f.paths[file] {
		return "/usr/sbin/" + file, nil
	}
	return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
}

func (f *fakeCmd) Output(_ context.Context, name string, args ...string) ([]byte, error) {
	line := strings.Join(append([]string{name}, args...), " ")
	f.calls = append(f.calls, line)
	o, ok := f.outs[line]
	if !ok {
		return nil, errors.New("fakeCmd: unexpected command " + line)
	}
	return []byte(o.out), o.err
}

// fakeEnv returns an Env that reads t's temporary tree, runs cmd and
// whose probes all succeed, as root; tests change what they exercise.
func fakeEnv(t *testing.T, cmd *fakeCmd) *Env {
	t.Helper()
	if cmd == nil {
		cmd = &fakeCmd{}
	}
	return &Env{
		Root:        t.TempDir(),
		Cmd:         cmd,
		Euid:        func() int { return 0 },
		Now:         func() time.Time { return time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC) },
		FSType:      func(string) (int64, error) { return 0x01021994, nil },
		ClockSynced: func() (bool, error) { return true, nil },
		ProbeNetNS:  func(context.Context) NetNSProbe { return NetNSProbe{} },
	}
}

// wantResult checks status and that the detail (and fix) hold substrings.
func wantResult(t *testing.T, got Result, status Status, detail, fix string) {
	t.Helper()
	if got.Status != status {
		t.Errorf("%s: status = %v, want %v (detail %q)", got.Name, got.Status, status, got.Detail)
	}
	if !strings.Contains(got.Detail, detail) {
		t.Errorf("%s: detail = %q, want it to contain %q", got.Name, got.Detail, detail)
	}
	if !strings.Contains(got.Fix, fix) {
		t.Errorf("%s: fix = %q, want it to contain %q", got.Name, got.Fix, fix)
	}
	if got.Status != OK && got.Status != Info && got.Fix == "" {
		t.Errorf("%s: %v without a fix", got.Name, got.Status)
	}
}
