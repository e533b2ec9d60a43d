package runner

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// collect runs RunOptions.Collect while the job's container still exists.
// A failure fails a job that had succeeded.
func (e *execution) collect(ctx context.Context, res *Result) {
	if e.opts.Collect == nil || e.ctr == nil || ctx.Err() != nil {
		return
	}
	err := e.opts.Collect(ctx, res.State, e.fetch, e.out)
	if err == nil || res.State != Success {
		return
	}
	res.State, res.Reason, res.Err = Failed, ScriptFailure, fmt.Errorf("collecting artifacts: %w", err)
	var re *job.ReasonError
	if errors.As(err, &re) {
		res.Reason = re.Reason
	}
}

// fetch copies rel (relative to the job's working directory, "." for all
// of it) out of the container into dst/rel on the host.
func (e *execution) fetch(ctx context.Context, rel, dst string) error {
	dl, ok := e.ctr.(executors.Downloader)
	if !ok {
		return errors.New("the executor cannot copy files out of the job")
	}
	rel = path.Clean(rel)
	if path.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("copying %q from the job: not inside the working directory", rel)
	}
	rc, err := dl.Download(ctx, path.Join(e.workDir(), rel))
	if err != nil {
		return err
	}
	defer rc.Close()
	return untarInto(rc, dst, rel)
}

// untarInto extracts a tar stream whose first name component stands for
// rel into dst/rel: regular files (mode bits kept, no set-id), directories
// and symlinks (created last, as links: never followed); other entries
// are skipped. Every write goes through an os.Root on dst and no name may
// climb out of it.
func untarInto(r io.Reader, dst, rel string) error {
	root, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer root.Close()
	type link struct{ name, target string }
	var links []link
	tr := newWholeTar(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the job's files: %w", err)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		rest := ""
		if i := strings.IndexByte(name, '/'); i >= 0 {
			rest = name[i+1:]
		}
		full := path.Clean(path.Join(rel, rest))
		if path.IsAbs(full) || full == ".." || strings.HasPrefix(full, "../") {
			return fmt.Errorf("reading the job's files: entry %q is outside the working directory", hdr.Name)
		}
		if full == "." && hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("reading the job's files: entry %q replaces the working directory", hdr.Name)
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if full != "." {
				if err := root.MkdirAll(full, 0o755); err != nil {
					return err
				}
				if err := root.Chmod(full, mode|0o700); err != nil {
					return err
				}
			}
		case tar.TypeReg:
			if d := path.Dir(full); d != "." {
				if err := root.MkdirAll(d, 0o755); err != nil {
					return err
				}
			}
			f, err := root.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if err = errors.Join(err, f.Close()); err != nil {
				return err
			}
			if err := root.Chmod(full, mode); err != nil {
				return err
			}
			if err := root.Chtimes(full, hdr.ModTime, hdr.ModTime); err != nil {
				return err
			}
		case tar.TypeSymlink:
			links = append(links, link{full, hdr.Linkname})
		}
	}
	for _, l := range links {
		if d := path.Dir(l.name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		if err := root.Symlink(l.target, l.name); err != nil {
			return err
		}
	}
	return nil
}
