package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// owner returns the file's owner uid.
func owner(fi os.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// checkStateDir: the state directory holds the encrypted store and the
// keys; it must be root's and closed to everyone else.
func checkStateDir(e *Env, dir string) Result {
	r := Result{Name: "state dir"}
	fi, err := os.Lstat(e.path(dir))
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.Status = Warn
		r.Detail = dir + " does not exist yet"
		r.Fix = "install -d -m 0700 -o root -g root " + dir + " (the systemd unit's StateDirectory= creates it too)"
		return r
	case err != nil:
		r.Status = Fail
		r.Detail = err.Error()
		r.Fix = "check " + dir
		return r
	case !fi.IsDir():
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s is not a directory (%s)", dir, fi.Mode().Type())
		r.Fix = "move it away and: install -d -m 0700 " + dir
		return r
	}
	if !rootOnly(&r, fi, dir, "%s has mode %04o; others can reach the state and keys", "chmod 0700 "+dir) {
		return r
	}
	r.Detail = fmt.Sprintf("%s is root's, mode %04o", dir, fi.Mode().Perm())
	return r
}

// checkKeyFile: a key file must be a regular file of root's, mode 0600 or
// narrower. A missing one is fine: it is created on first use.
func checkKeyFile(e *Env, path string) Result {
	r := Result{Name: filepath.Base(path)}
	fi, err := os.Lstat(e.path(path))
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.Detail = path + " not created yet (created 0600 on first use)"
		return r
	case err != nil:
		r.Status = Fail
		r.Detail = err.Error()
		r.Fix = "check " + path
		return r
	case !fi.Mode().IsRegular():
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s is not a regular file (%s)", path, fi.Mode().Type())
		r.Fix = "replace it with the key file itself (no symlinks)"
		return r
	}
	if !rootOnly(&r, fi, path, "%s has mode %04o, wider than 0600", "chmod 0600 "+path+" (and consider the key exposed: rotate it)") {
		return r
	}
	r.Detail = fmt.Sprintf("%s mode %04o", path, fi.Mode().Perm())
	return r
}

// fsNames names the f_type values an admin is likely to meet.
var fsNames = map[int64]string{
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.RAMFS_MAGIC:           "ramfs",
	unix.EXT4_SUPER_MAGIC:      "ext2/3/4",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlay",
	unix.NFS_SUPER_MAGIC:       "nfs",
}

func fsName(t int64) string {
	if n, ok := fsNames[t]; ok {
		return n
	}
	return fmt.Sprintf("file system type %#x", t)
}

func statfsType(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Type), nil
}

// checkRuntimeDir: per-job files belong on tmpfs, so that they vanish with
// a reboot. A directory that does not exist yet is judged by the file
// system it will be created on.
func checkRuntimeDir(e *Env, dir string) Result {
	r := Result{Name: "runtime dir"}
	p := filepath.Clean(dir)
	for {
		if _, err := os.Stat(e.path(p)); err == nil || p == "/" {
			break
		}
		p = filepath.Dir(p)
	}
	t, err := e.FSType(e.path(p))
	if err != nil {
		r.Status = Warn
		r.Detail = fmt.Sprintf("statfs %s: %v", p, err)
		r.Fix = "check " + dir
		return r
	}
	where := dir
	if p != filepath.Clean(dir) {
		where = fmt.Sprintf("%s (not created yet; %s)", dir, p)
	}
	if t != unix.TMPFS_MAGIC && t != unix.RAMFS_MAGIC {
		r.Status = Warn
		r.Detail = fmt.Sprintf("%s is on %s, not tmpfs: per-job files would survive a reboot", where, fsName(t))
		r.Fix = "set runtime_dir to a directory under /run (tmpfs on systemd hosts)"
		if p == "/run" || strings.HasPrefix(p, "/run/") {
			r.Fix = "mount a tmpfs on /run (systemd does at boot; containers often do not)"
		}
		return r
	}
	r.Detail = where + " is on " + fsName(t)
	return r
}

// rootOnly checks that fi (at path) is root's and closed to group and
// others; otherwise it fails r with the matching detail and fix (modeMsg
// takes the path and the mode) and returns false.
func rootOnly(r *Result, fi os.FileInfo, path, modeMsg, modeFix string) bool {
	if uid, ok := owner(fi); ok && uid != 0 {
		r.Status = Fail
		r.Detail = fmt.Sprintf("%s is owned by uid %d, not root", path, uid)
		r.Fix = "chown root:root " + path
		return false
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		r.Status = Fail
		r.Detail = fmt.Sprintf(modeMsg, path, perm)
		r.Fix = modeFix
		return false
	}
	return true
}
