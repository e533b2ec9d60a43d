package runner

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/airlock-ci/airlock/executors"
)

// workspace fills a fresh host directory through RunOptions.Workspace and
// copies it into the job's working directory.
func (e *execution) workspace(ctx context.Context) error {
	up, ok := e.ctr.(executors.Uploader)
	if !ok {
		return errors.New("preparing sources: the executor cannot copy files into the job")
	}
	dir, err := os.MkdirTemp("", "airlock-workspace-")
	if err != nil {
		return fmt.Errorf("preparing sources: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := e.opts.Workspace(ctx, dir, e.out); err != nil {
		return fmt.Errorf("preparing sources: %w", err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarDir(pw, dir)) }()
	err = up.Upload(ctx, e.r.cfg.WorkDir, pr)
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("copying sources into the job: %w", err)
	}
	return nil
}

// tarDir writes dir's tree as a tar stream: regular files, directories and
// symlinks, with their modes.
func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() && !info.IsDir() {
			return nil // sockets, devices: never part of sources
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	return errors.Join(err, tw.Close())
}
