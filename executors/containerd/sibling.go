package containerd

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"github.com/airlock-ci/airlock/executors"
)

var (
	_ executors.SiblingCreator = (*Container)(nil)
	_ executors.Downloader     = (*Container)(nil)
)

// CreateSibling implements executors.SiblingCreator: the sibling's task
// joins the job's network namespace and is made as the job container is.
func (c *Container) CreateSibling(ctx context.Context, name string, spec executors.Spec) (executors.Container, executors.ImageCommand, error) {
	jobLabels, err := c.ctr.Labels(c.e.ctx(ctx))
	if err != nil {
		return nil, executors.ImageCommand{}, fmt.Errorf("reading the labels of job %s: %w", c.job, err)
	}
	labels := executors.ChildLabels(spec.Labels, jobLabels, executors.LabelSibling, name)
	runner := labels[executors.LabelRunner]
	spec.RunnerID, spec.JobID = runner, c.job
	spec.NetNS, spec.NetHolder = c.NetNS(), ""
	var cmd executors.ImageCommand
	s, err := c.e.create(ctx, spec, IDPrefix(runner)+idPart(c.job+"/sibling/"+name, 40), labels, &cmd)
	if err != nil {
		return nil, executors.ImageCommand{}, fmt.Errorf("sibling %s: %w", name, err)
	}
	return s, cmd, nil
}

// Download implements executors.Downloader with the image's tar inside
// the container (as the container's user), so that no path of it is
// ever resolved on the host. A read of the stream after the tar failed
// returns its error.
func (c *Container) Download(ctx context.Context, p string) (io.ReadCloser, error) {
	p = path.Clean(p)
	if !path.IsAbs(p) || p == "/" {
		return nil, fmt.Errorf("copying %s from job %s: want an absolute path below /", p, c.job)
	}
	code, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c", `test -e "$1" || test -L "$1"`, "exists", p}})
	if err != nil {
		return nil, fmt.Errorf("copying %s from job %s: %w", p, c.job, err)
	}
	if code != 0 {
		return nil, fmt.Errorf("copying %s from job %s: %w", p, c.job, fs.ErrNotExist)
	}
	pr, pw := io.Pipe()
	go func() {
		var stderr strings.Builder
		code, err := c.Exec(ctx, executors.Exec{Cmd: []string{"tar", "-c", "-f", "-", "-C", path.Dir(p), path.Base(p)},
			Stdout: pw, Stderr: &stderr})
		if err == nil && code != 0 {
			err = fmt.Errorf("tar exited with %d: %s", code, strings.TrimSpace(stderr.String()))
		}
		if err != nil {
			err = fmt.Errorf("copying %s from job %s: %w", p, c.job, err)
		}
		pw.CloseWithError(err)
	}()
	return &drainOnClose{pr}, nil
}

// drainOnClose reads what its reader still has when it is closed, in the
// background, and drops it: the tar behind it ends on its own (a reader
// of a tar stream stops at the archive's end marker, before the exec has
// ended). Cancelling that exec instead would stop every process of the
// container, as a cancelled step does — a concurrent exec and the job's
// background processes with it.
type drainOnClose struct{ *io.PipeReader }

func (r *drainOnClose) Close() error {
	go func() { _, _ = io.Copy(io.Discard, r.PipeReader) }()
	return nil
}
