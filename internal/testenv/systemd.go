package testenv

import (
	"os/exec"
	"testing"
)

// RequireSystemdAnalyze skips (or fails, when AIRLOCK_TEST_REQUIRE names
// "systemd") unless systemd-analyze runs, and returns its path. It does not
// need systemd to be running: `systemd-analyze verify` loads units offline.
func RequireSystemdAnalyze(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("systemd-analyze")
	if err != nil {
		missing(t, "systemd", "systemd-analyze not found: "+err.Error())
		return ""
	}
	if out, err := exec.Command(path, "--version").CombinedOutput(); err != nil {
		missing(t, "systemd", "systemd-analyze --version failed: "+err.Error()+": "+string(out))
		return ""
	}
	return path
}
