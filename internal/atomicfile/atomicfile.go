// Package atomicfile writes files so that a crash at any instant leaves
// either the old content or the new one, never a torn file, and so that
// what was written survives a power loss once the call returns: the one
// implementation of "temp file, fsync, rename, fsync the directory" and of
// "create once" (link) for every package that keeps state on disk.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tempMarker is in the name of every temporary file: "." + base + marker +
// random, in the target's directory.
const tempMarker = ".tmp-"

// WriteFile writes data to path atomically and durably with the given
// mode: a temporary file in the same directory is written, fsynced,
// renamed over path, and the directory is fsynced. The directory must
// exist. On error, path is unchanged and the temporary file is removed.
func WriteFile(path string, data []byte, mode fs.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(fmt.Errorf("renaming %s into place: %w", tmp, err), os.Remove(tmp))
	}
	return SyncDir(filepath.Dir(path))
}

// CreateOnce creates path with data and mode unless it exists: the content
// is written and fsynced under a temporary name, then linked into place,
// so that path never exists incomplete (O_EXCL would leave an empty or
// torn file after a crash) and of two concurrent creators exactly one
// wins. When path exists already it returns an error for which
// errors.Is(err, fs.ErrExist) holds, and path is unchanged.
func CreateOnce(path string, data []byte, mode fs.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	lerr := os.Link(tmp, path)
	rerr := os.Remove(tmp)
	if lerr != nil {
		if errors.Is(lerr, fs.ErrExist) {
			return fmt.Errorf("creating %s: %w", path, fs.ErrExist)
		}
		return errors.Join(fmt.Errorf("linking %s into place: %w", path, lerr), rerr)
	}
	return errors.Join(rerr, SyncDir(filepath.Dir(path)))
}

func writeTemp(path string, data []byte, mode fs.FileMode) (string, error) {
	r := make([]byte, 8)
	if _, err := rand.Read(r); err != nil {
		return "", err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+tempMarker+hex.EncodeToString(r))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode.Perm())
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	_, werr := f.Write(data)
	cherr := f.Chmod(mode.Perm()) // the umask may have narrowed it
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, cherr, serr, cerr); err != nil {
		return "", errors.Join(fmt.Errorf("writing %s: %w", path, err), os.Remove(tmp))
	}
	return tmp, nil
}

// SyncDir fsyncs a directory, making renames and links in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	serr := d.Sync()
	cerr := d.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// TempsIn lists the temporary files WriteFile or CreateOnce left in dir,
// for any target, when a process died between creating and renaming them.
// As with Temps, removing them is the call of a caller that knows no
// writer in dir is running.
func TempsIn(dir string) ([]string, error) {
	out, err := temps(dir, func(n string) bool { return strings.HasPrefix(n, ".") && strings.Contains(n, tempMarker) })
	if err != nil {
		return nil, fmt.Errorf("listing temporary files in %s: %w", dir, err)
	}
	return out, nil
}

// Temps lists the temporary files WriteFile or CreateOnce of path left
// when the process died between creating and renaming them. Only the
// caller knows when no writer of path is running (it holds path's lock):
// removing them is its call.
func Temps(path string) ([]string, error) {
	prefix := "." + filepath.Base(path) + tempMarker
	out, err := temps(filepath.Dir(path), func(n string) bool { return strings.HasPrefix(n, prefix) })
	if err != nil {
		return nil, fmt.Errorf("listing temporary files of %s: %w", path, err)
	}
	return out, nil
}

// temps lists the regular files in dir whose names match.
func temps(dir string, match func(name string) bool) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if match(e.Name()) && e.Type().IsRegular() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}
