package runner

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

var _ job.ContainerStepHost = (*stepHost)(nil)

// siblingCopyTimeout bounds copying a step container's directories back
// into the job's after its command ended (also after a cancel).
const siblingCopyTimeout = 5 * time.Minute

// ExecContainer implements job.ContainerStepHost with the executor's
// SiblingCreator: the container is made as the job's is (same
// namespace, hardening, limits and labels), the In directories are
// copied in from the job's container through the executor's archive
// calls, the command runs with the job's base environment and x.Env
// given at exec time (never in the container's configuration), the Out
// directories are copied back, and the container is destroyed on every
// path.
func (h *stepHost) ExecContainer(ctx context.Context, x job.ContainerExec) (int, error) {
	e := h.e
	sc, ok := e.ctr.(executors.SiblingCreator)
	jobDown, okd := e.ctr.(executors.Downloader)
	jobUp, oku := e.ctr.(executors.Uploader)
	if !ok || !okd || !oku {
		return -1, errors.New("this executor cannot run a step in a container of its own image")
	}
	if err := allowedImage("image", x.Image, "allowed_images", e.r.cfg.AllowedImages); err != nil {
		return -1, err
	}
	if !path.IsAbs(x.Root) || path.Clean(x.Root) == "/" {
		return -1, fmt.Errorf("container step %s: root %q must be an absolute directory below /", x.Name, x.Root)
	}
	stdout := x.Stdout
	if stdout == nil {
		stdout = e.out
	}
	mounts := []executors.Mount{{Source: e.dir, Target: containerRunDir}}
	if e.r.Network != nil {
		mounts = append(mounts, executors.Mount{Source: filepath.Join(e.dir, "resolv.conf"), Target: "/etc/resolv.conf"})
	}
	for _, m := range e.svcMounts {
		if m.Target == "/etc/hosts" {
			mounts = append(mounts, m)
		}
	}
	t0 := time.Now()
	s, img, err := sc.CreateSibling(ctx, x.Name, executors.Spec{
		Image:        x.Image,
		Pull:         e.r.cfg.Pull,
		RegistryAuth: e.registryAuth(),
		Limits:       e.limits(),
		WorkDir:      x.Root,
		Mounts:       mounts,
	})
	if err != nil {
		return -1, fmt.Errorf("creating the container of image %s: %w", x.Image, err)
	}
	e.log.Debug("step container created", "job", e.j.ID, "name", x.Name, "image", x.Image, "took", time.Since(t0))
	var imageID string
	if ir, ok := s.(executors.ImageReporter); ok {
		imageID = ir.ImageID()
	}
	e.trail.note(ctx, audit.NewStepContainer(h.step, x.Name, x.Image, imageID))
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := s.Destroy(dctx); derr != nil {
			e.log.Warn("removing a step container failed; recovery removes it", "job", e.j.ID, "name", x.Name, "error", derr)
		}
	}()
	sDown, okd := s.(executors.Downloader)
	sUp, oku := s.(executors.Uploader)
	if !okd || !oku {
		return -1, errors.New("this executor cannot copy files into a step's container")
	}
	if err := sUp.Upload(ctx, x.Root, bundleIn(ctx, jobDown, x)); err != nil {
		return -1, fmt.Errorf("copying the job's files into the container of image %s: %w", x.Image, err)
	}
	argv := executors.ServiceArgv(executors.ServiceSpec{Entrypoint: x.Entrypoint, Cmd: x.Args}, img.Entrypoint, img.Cmd)
	if len(argv) == 0 {
		return -1, fmt.Errorf("image %s names no command and the step gives none", x.Image)
	}
	code, err := s.Exec(ctx, executors.Exec{
		Cmd:     argv,
		Env:     mergeEnv(e.env, x.Env),
		WorkDir: x.WorkDir,
		Stdout:  stdout,
		Stderr:  stdout,
		Grace:   e.r.cfg.Grace,
	})
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), siblingCopyTimeout)
	defer cancel()
	var cerrs []error
	for _, c := range x.Out {
		if cerr := copyBack(cctx, h, sDown, jobUp, c); cerr != nil {
			cerrs = append(cerrs, cerr)
		}
	}
	if err != nil {
		return -1, errors.Join(append([]error{err}, cerrs...)...)
	}
	if len(cerrs) > 0 {
		return -1, fmt.Errorf("copying the step's files back into the job: %w", errors.Join(cerrs...))
	}
	return code, nil
}

// bundleIn is one tar stream, relative to x.Root, of x.Dirs, the
// contents of every In copy (read from the job's container) under its
// To, and x.Links. A failed read ends the stream with its error.
func bundleIn(ctx context.Context, down executors.Downloader, x job.ContainerExec) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		dirs := map[string]bool{}
		mkdir := func(rel string) error {
			for _, d := range parents(rel) {
				if dirs[d] {
					continue
				}
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: time.Now()}); err != nil {
					return err
				}
			}
			return nil
		}
		err := func() error {
			for _, d := range x.Dirs {
				rel, err := below(x.Root, d)
				if err != nil {
					return err
				}
				if err := mkdir(rel); err != nil {
					return err
				}
			}
			for _, c := range x.In {
				rel, err := below(x.Root, c.To)
				if err != nil {
					return err
				}
				if err := mkdir(rel); err != nil {
					return err
				}
				rc, err := down.Download(ctx, c.From)
				if err != nil {
					return err
				}
				err = renameInto(tw, rc, rel)
				rc.Close()
				if err != nil {
					return fmt.Errorf("reading %s: %w", c.From, err)
				}
			}
			for _, l := range x.Links {
				rel, err := below(x.Root, l.Path)
				if err != nil {
					return err
				}
				if dir := path.Dir(rel); dir != "." {
					if err := mkdir(dir); err != nil {
						return err
					}
				}
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: rel, Linkname: l.Target, Mode: 0o777, ModTime: time.Now()}); err != nil {
					return err
				}
			}
			return tw.Close()
		}()
		pw.CloseWithError(err)
	}()
	return pr
}

// copyBack replaces the contents of the job container's c.To with those
// of the step container's c.From.
func copyBack(ctx context.Context, h *stepHost, down executors.Downloader, up executors.Uploader, c job.DirCopy) error {
	to := path.Clean(c.To)
	if !path.IsAbs(to) || to == "/" {
		return fmt.Errorf("copying back into %q: want an absolute directory below /", c.To)
	}
	rc, err := down.Download(ctx, c.From)
	if err != nil {
		return err
	}
	defer rc.Close()
	var out strings.Builder
	code, err := h.Exec(ctx, job.StepExec{Cmd: []string{"/bin/sh", "-c", clearScript, "clear", to}, Stdout: &out})
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, strings.TrimSpace(out.String()))
	}
	if err != nil {
		return fmt.Errorf("emptying %s for the step's files: %w", to, err)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := renameInto(tw, rc, path.Base(to))
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	if err := up.Upload(ctx, path.Dir(to), pr); err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("copying %s back into %s: %w", c.From, to, err)
	}
	return nil
}

// clearScript empties directory $1 (making it if missing), keeping it:
// it may be a mount point.
const clearScript = `mkdir -p -- "$1" && cd -- "$1" && for f in * .[!.]* ..?*; do if [ -e "$f" ] || [ -L "$f" ]; then rm -rf -- "$f" || exit 1; fi; done`

// renameInto copies a tar stream whose first name component stands for
// a directory into tw with that component replaced by rel (hard link
// targets too). Every name stays below rel.
func renameInto(tw *tar.Writer, r io.Reader, rel string) error {
	tr := newWholeTar(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name, ok := rebase(hdr.Name, rel)
		if !ok {
			return fmt.Errorf("archive entry %q climbs out of its directory", hdr.Name)
		}
		if name == rel && hdr.Typeflag == tar.TypeDir {
			continue // made by the caller, or there already
		}
		hdr.Name = name
		if hdr.Typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		if hdr.Typeflag == tar.TypeLink {
			if hdr.Linkname, ok = rebase(hdr.Linkname, rel); !ok {
				return fmt.Errorf("archive entry %q links out of its directory", hdr.Name)
			}
		}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return err
			}
		}
	}
}

// rebase replaces name's first component with rel; false when the rest
// would climb out.
func rebase(name, rel string) (string, bool) {
	name = strings.TrimPrefix(strings.TrimPrefix(name, "./"), "/")
	_, rest, _ := strings.Cut(strings.TrimSuffix(name, "/"), "/")
	if rest == "" {
		return rel, true
	}
	clean := path.Clean(rest)
	if clean == ".." || strings.HasPrefix(clean, "../") || path.IsAbs(clean) {
		return "", false
	}
	return path.Join(rel, clean), true
}

// below is p relative to root, which it must be inside.
func below(root, p string) (string, error) {
	root, p = path.Clean(root), path.Clean(p)
	if !strings.HasPrefix(p, root+"/") {
		return "", fmt.Errorf("%s is not below %s", p, root)
	}
	return strings.TrimPrefix(p, root+"/"), nil
}

// parents is rel and every directory above it ("a/b" → "a", "a/b").
func parents(rel string) []string {
	var out []string
	for i := 0; i < len(rel); i++ {
		if rel[i] == '/' {
			out = append(out, rel[:i])
		}
	}
	return append(out, rel)
}
