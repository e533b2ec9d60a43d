package docker

import (
	"context"
	"fmt"
	"io"
	"io/fs"

	cerrdefs "github.com/containerd/errdefs"
)

// Download implements executors.Downloader with the engine's archive API
// (GET /containers/:id/archive): the engine reads the path inside the
// container's root filesystem, and a symlink is archived as a symlink.
func (c *Container) Download(ctx context.Context, path string) (io.ReadCloser, error) {
	rc, _, err := c.e.cli.CopyFromContainer(ctx, c.id, path)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("copying %s from job %s: %w", path, c.job, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("copying %s from job %s: %w", path, c.job, err)
	}
	return rc, nil
}
