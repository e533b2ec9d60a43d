package gitlab

import (
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// ErrUnsafePath: an archive entry would land outside the directory it is
// extracted into.
var ErrUnsafePath = errors.New("archive entry resolves outside the project directory")

// safeName cleans an archive entry name; it refuses absolute names and
// names that climb out with "..".
func safeName(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) || strings.Contains(name, `\`) {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	clean := path.Clean(name)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	return clean, nil
}

// ExtractZip extracts the zip at zr into dir, as gitlab-runner's fastzip
// extractor does: an entry resolving outside dir fails the whole
// extraction, existing files are replaced, modes and times are restored,
// and symlinks are created last so that no entry is ever written through
// a link from the archive. Every write goes through an os.Root on dir, so
// a symlink already in dir cannot redirect a write outside it either.
// skip, if set, names entries to leave out.
func ExtractZip(zr *zip.Reader, dir string, skip func(name string) bool) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("extracting archive: %w", err)
	}
	defer root.Close()
	type link struct{ name, target string }
	var links []link
	// Validate every name first: a bad entry fails before anything is written.
	names := make([]string, len(zr.File))
	for i, f := range zr.File {
		n, err := safeName(f.Name)
		if err != nil {
			return fmt.Errorf("extracting archive: %w", err)
		}
		names[i] = n
	}
	for i, f := range zr.File {
		name := names[i]
		if name == "." || (skip != nil && skip(name)) {
			continue
		}
		mode := f.Mode()
		switch {
		case mode.IsDir():
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("extracting %s: %w", name, err)
			}
			_ = root.Chmod(name, mode.Perm()|0o700)
		case mode&fs.ModeSymlink != 0:
			rc, err := f.Open()
			if err != nil {
				return fmt.Errorf("extracting %s: %w", name, err)
			}
			b, err := io.ReadAll(io.LimitReader(rc, 4096))
			rc.Close()
			if err != nil {
				return fmt.Errorf("extracting %s: %w", name, err)
			}
			links = append(links, link{name, string(b)})
		case mode.IsRegular():
			if err := extractFile(root, name, f); err != nil {
				return fmt.Errorf("extracting %s: %w", name, err)
			}
		}
	}
	for _, l := range links {
		if d := path.Dir(l.name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("extracting %s: %w", l.name, err)
			}
		}
		if err := root.Remove(l.name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("extracting %s: %w", l.name, err)
		}
		if err := root.Symlink(l.target, l.name); err != nil {
			return fmt.Errorf("extracting %s: %w", l.name, err)
		}
	}
	return nil
}

func extractFile(root *os.Root, name string, f *zip.File) error {
	if d := path.Dir(name); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Replace, never write through: remove what is there (a link, a file).
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, f.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(out, rc)
	err = errors.Join(err, out.Close())
	if err == nil {
		err = root.Chmod(name, f.Mode().Perm())
	}
	if err == nil && !f.Modified.IsZero() {
		err = root.Chtimes(name, f.Modified, f.Modified)
	}
	return err
}
