package docker

import (
	"context"
	"fmt"

	"github.com/docker/docker/api/types/container"

	"github.com/airlock-ci/airlock/executors"
)

var _ executors.SiblingCreator = (*Container)(nil)

// CreateSibling implements executors.SiblingCreator: the sibling joins
// the network namespace the job container has (NetworkMode container:ID
// of the job container or of its network holder), checked by its pid
// like a holder's, and is made as the job container is.
func (c *Container) CreateSibling(ctx context.Context, name string, spec executors.Spec) (executors.Container, executors.ImageCommand, error) {
	e := c.e
	info, err := e.cli.ContainerInspect(ctx, c.id)
	if err != nil {
		return nil, executors.ImageCommand{}, fmt.Errorf("inspecting container of job %s: %w", c.job, err)
	}
	labels := executors.ChildLabels(spec.Labels, info.Config.Labels, executors.LabelSibling, name)
	spec.RunnerID, spec.JobID = labels[executors.LabelRunner], c.job
	spec.NetNS, spec.NetHolder = "", ""
	if err := e.ensureImage(ctx, spec.Image, spec.Pull, spec.RegistryAuth); err != nil {
		return nil, executors.ImageCommand{}, err
	}
	img, err := e.cli.ImageInspect(ctx, spec.Image)
	if err != nil {
		return nil, executors.ImageCommand{}, fmt.Errorf("inspecting image %s: %w", spec.Image, err)
	}
	var cmd executors.ImageCommand
	if img.Config != nil {
		cmd = executors.ImageCommand{Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd}
	}
	s, err := e.create(ctx, spec, labels, "airlock-"+spec.RunnerID+"-"+c.job+"-"+sanitizeName(name),
		container.NetworkMode("container:"+c.netOwner), c.pid)
	if err != nil {
		return nil, executors.ImageCommand{}, fmt.Errorf("sibling %s: %w", name, err)
	}
	return s, cmd, nil
}
