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
	"strings"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/procs"
)

// workspace fills a fresh host directory through RunOptions.Workspace and
// copies it into the job's working directory.
func (e *execution) workspace(ctx context.Context) error {
	up, ok := e.ctr.(executors.Uploader)
	if !ok {
		return errors.New("preparing sources: the executor cannot copy files into the job")
	}
	dir := e.wsDir
	if dir == "" {
		var cleanup func()
		var err error
		if dir, cleanup, err = e.r.makeWorkspaceDir(e.j.ID); err != nil {
			return fmt.Errorf("preparing sources: %w", err)
		}
		defer cleanup()
		if err := e.opts.Workspace(ctx, dir, e.out); err != nil {
			return fmt.Errorf("preparing sources: %w", err)
		}
		// The sources are on the host, not yet in the job, no step has run.
		if err := e.leakScan(ctx, dir); err != nil {
			return err
		}
	} else {
		defer e.dropEarlyClone()
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarDir(pw, dir)) }()
	err := up.Upload(ctx, e.workDir(), pr)
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("copying sources into the job: %w", err)
	}
	return nil
}

// cloneEarly makes the job's host-side clone before anything of the job
// exists (no container, no credential) when its change is to be scanned
// for leaks, so that under block a finding fails the job before then;
// workspace copies the clone in later.
func (e *execution) cloneEarly(ctx context.Context) error {
	if e.opts.Workspace == nil || e.opts.GitDir != "" || e.r.LeakScan == nil || e.j.SHA == "" {
		return nil
	}
	dir, cleanup, err := e.r.makeWorkspaceDir(e.j.ID)
	if err != nil {
		return fmt.Errorf("preparing sources: %w", err)
	}
	e.wsDir, e.wsCleanup = dir, cleanup
	if err := e.opts.Workspace(ctx, dir, e.out); err != nil {
		return fmt.Errorf("preparing sources: %w", err)
	}
	return e.leakScan(ctx, dir)
}

// dropEarlyClone removes the clone of cloneEarly (idempotent).
func (e *execution) dropEarlyClone() {
	if e.wsCleanup != nil {
		e.wsCleanup()
	}
	e.wsDir, e.wsCleanup = "", nil
}

// workspacesDir, under the runtime directory, holds the host-side clones of
// running jobs: root-only, labelled with the runner and job id and the
// owning process, and swept by recovery (a crash mid-clone leaves sources
// there, never in the host's /tmp).
const workspacesDir = "workspaces"

// makeWorkspaceDir creates an empty directory for the job's host-side
// clone and returns it with the function that removes it. The clone goes
// into "src" of a directory named <runner>-<job> that carries the owner
// file; it is made under a temporary name and renamed, as the runtime
// directory is.
func (r *Runner) makeWorkspaceDir(jobID string) (string, func(), error) {
	dir, err := r.makeOwnedDir(filepath.Join(r.cfg.RuntimeDir, workspacesDir), jobID, "src", 0o700)
	if err != nil {
		return "", nil, fmt.Errorf("creating workspace directory for job %s: %w", jobID, err)
	}
	return filepath.Join(dir, "src"), func() {
		if err := os.RemoveAll(dir); err != nil {
			r.log.Error("removing the job's host-side clone", "job", jobID, "dir", dir, "error", err)
		}
	}, nil
}

// sweepWorkspaces removes the host-side clones of this runner's jobs whose
// process is gone, and partial ones a crash left while creating them.
func (r *Runner) sweepWorkspaces() error {
	base := filepath.Join(r.cfg.RuntimeDir, workspacesDir)
	ents, err := os.ReadDir(base)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing workspace directories: %w", err)
	}
	var errs []error
	prefix := r.cfg.RunnerID + "-"
	for _, e := range ents {
		partial := strings.HasPrefix(e.Name(), partialPrefix)
		if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) && !partial {
			continue
		}
		dir := filepath.Join(base, e.Name())
		if partial && !partialDead(dir) {
			continue // being created by a live process
		}
		if b, err := os.ReadFile(filepath.Join(dir, ownerFile)); !partial && err == nil {
			if o, err := procs.Parse(strings.TrimSpace(string(b))); err == nil && o.Alive() {
				continue
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing workspace directory %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
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
