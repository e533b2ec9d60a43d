package hostcheck

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// The ownership checks want root's files: these tests create files as
// root (and chown some away).
func TestCheckStateDir(t *testing.T) {
	testenv.RequireRoot(t)
	tests := []struct {
		name   string
		setup  func(t *testing.T, p string)
		status Status
		detail string
		fix    string
	}{
		{"good", func(t *testing.T, p string) { mkdir(t, p, 0o700) }, OK, "root's, mode 0700", ""},
		{"missing", func(*testing.T, string) {}, Warn, "does not exist", "install -d -m 0700"},
		{"group readable", func(t *testing.T, p string) { mkdir(t, p, 0o750) }, Fail, "mode 0750", "chmod 0700"},
		{"world readable", func(t *testing.T, p string) { mkdir(t, p, 0o755) }, Fail, "mode 0755", "chmod 0700"},
		{"not root's", func(t *testing.T, p string) { mkdir(t, p, 0o700); chown(t, p, 65534) }, Fail, "uid 65534", "chown root:root"},
		{"a file", func(t *testing.T, p string) { mkdir(t, filepath.Dir(p), 0o755); writeFile(t, p, 0o600) }, Fail, "not a directory", "install -d"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEnv(t, nil)
			tc.setup(t, filepath.Join(e.Root, "/var/lib/airlock"))
			wantResult(t, checkStateDir(e, "/var/lib/airlock"), tc.status, tc.detail, tc.fix)
		})
	}
}

func TestCheckKeyFile(t *testing.T) {
	testenv.RequireRoot(t)
	tests := []struct {
		name   string
		setup  func(t *testing.T, p string)
		status Status
		detail string
		fix    string
	}{
		{"0600", func(t *testing.T, p string) { writeFile(t, p, 0o600) }, OK, "mode 0600", ""},
		{"0400", func(t *testing.T, p string) { writeFile(t, p, 0o400) }, OK, "mode 0400", ""},
		{"missing", func(*testing.T, string) {}, OK, "not created yet", ""},
		{"0640", func(t *testing.T, p string) { writeFile(t, p, 0o640) }, Fail, "mode 0640, wider than 0600", "chmod 0600"},
		{"0644", func(t *testing.T, p string) { writeFile(t, p, 0o644) }, Fail, "0644", "rotate"},
		{"not root's", func(t *testing.T, p string) { writeFile(t, p, 0o600); chown(t, p, 65534) }, Fail, "uid 65534", "chown"},
		{"symlink", func(t *testing.T, p string) {
			writeFile(t, p+".real", 0o600)
			if err := os.Symlink(p+".real", p); err != nil {
				t.Fatal(err)
			}
		}, Fail, "not a regular file", "no symlinks"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEnv(t, nil)
			mkdir(t, filepath.Join(e.Root, "/var/lib/airlock"), 0o700)
			tc.setup(t, filepath.Join(e.Root, "/var/lib/airlock/state.key"))
			got := checkKeyFile(e, "/var/lib/airlock/state.key")
			if got.Name != "state.key" {
				t.Errorf("Name = %q, want state.key", got.Name)
			}
			wantResult(t, got, tc.status, tc.detail, tc.fix)
		})
	}
}

func TestCheckRuntimeDir(t *testing.T) {
	tests := []struct {
		name     string
		dir      string
		exists   bool
		fsType   int64
		fsErr    error
		wantPath string // the path FSType must be asked about
		status   Status
		detail   string
		fix      string
	}{
		{"tmpfs", "/run/airlock", true, unix.TMPFS_MAGIC, nil, "/run/airlock", OK, "/run/airlock is on tmpfs", ""},
		{"not created yet", "/run/airlock", false, unix.TMPFS_MAGIC, nil, "/run", OK, "not created yet; /run", ""},
		{"/run on disk", "/run/airlock", true, unix.EXT4_SUPER_MAGIC, nil, "/run/airlock", Warn, "on ext2/3/4, not tmpfs", "mount a tmpfs on /run"},
		{"elsewhere on disk", "/srv/airlock", true, unix.XFS_SUPER_MAGIC, nil, "/srv/airlock", Warn, "xfs", "runtime_dir to a directory under /run"},
		{"unknown fs", "/srv/airlock", true, 0x1234, nil, "/srv/airlock", Warn, "file system type 0x1234", "under /run"},
		{"statfs fails", "/srv/airlock", true, 0, errors.New("boom"), "/srv/airlock", Warn, "statfs /srv/airlock: boom", "check"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEnv(t, nil)
			mkdir(t, filepath.Join(e.Root, "/run"), 0o755)
			if tc.exists {
				mkdir(t, filepath.Join(e.Root, tc.dir), 0o700)
			}
			var asked string
			e.FSType = func(p string) (int64, error) { asked = p; return tc.fsType, tc.fsErr }
			wantResult(t, checkRuntimeDir(e, tc.dir), tc.status, tc.detail, tc.fix)
			if want := filepath.Join(e.Root, tc.wantPath); asked != want {
				t.Errorf("FSType asked about %q, want %q", asked, want)
			}
		})
	}
}

func TestCheckClock(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		built  time.Time
		synced bool
		err    error
		status Status
		detail string
		fix    string
	}{
		{"synced", now.Add(-time.Hour), true, nil, OK, "synchronized", ""},
		{"build time unknown", time.Time{}, true, nil, OK, "synchronized", ""},
		{"before build", now.Add(time.Hour), true, nil, Fail, "before this binary was built (2026-06-01T13:00:00Z)", "set-ntp"},
		{"not synced", now.Add(-time.Hour), false, nil, Warn, "not synchronized", "chrony"},
		{"unknown", now.Add(-time.Hour), false, errors.New("no adjtimex"), Info, "unknown: no adjtimex", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEnv(t, nil)
			e.Now = func() time.Time { return now }
			e.ClockSynced = func() (bool, error) { return tc.synced, tc.err }
			wantResult(t, checkClock(e, tc.built), tc.status, tc.detail, tc.fix)
		})
	}
}

func TestCheckConfig(t *testing.T) {
	tests := []struct {
		name      string
		required  bool
		body      string // "" = no file
		mode      os.FileMode
		status    Status
		detail    string
		fix       string
		wantState string
	}{
		{"missing", false, "", 0, Warn, "does not exist; the defaults apply", "install -m 0600", "/var/lib/airlock"},
		{"missing but named", true, "", 0, Fail, "does not exist", "install -m 0600", "/var/lib/airlock"},
		{"good", false, "concurrent = 2\nstate_dir = \"/srv/state\"\n", 0o600, OK, "parses and validates", "", "/srv/state"},
		{"too open", false, "concurrent = 2\n", 0o644, Warn, "mode is 0644", "chmod 0600", "/var/lib/airlock"},
		{"invalid", false, "concurrent = 0\nlog_format = \"xml\"\n", 0o600, Fail, "concurrent: must be at least 1", "correct /etc/airlock/config.toml", "/var/lib/airlock"},
		{"unknown key", false, "concurent = 2\n", 0o600, Fail, `unknown key "concurent"`, "correct", "/var/lib/airlock"},
		{"syntax", false, "concurrent = \n", 0o600, Fail, "config.toml:1", "correct", "/var/lib/airlock"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEnv(t, nil)
			if tc.body != "" {
				p := filepath.Join(e.Root, "/etc/airlock/config.toml")
				mkdir(t, filepath.Dir(p), 0o755)
				if err := os.WriteFile(p, []byte(tc.body), tc.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, tc.mode); err != nil { // umask
					t.Fatal(err)
				}
			}
			got, cfg := checkConfig(e, "/etc/airlock/config.toml", tc.required)
			wantResult(t, got, tc.status, tc.detail, tc.fix)
			if tc.name == "invalid" {
				wantResult(t, got, tc.status, "log_format", tc.fix) // every problem at once
			}
			if cfg == nil || cfg.StateDir != tc.wantState {
				t.Errorf("checkConfig config state_dir = %v, want %q", cfg, tc.wantState)
			}
		})
	}
}

func mkdir(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte("key"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, p string, uid int) {
	t.Helper()
	if err := os.Lchown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}
