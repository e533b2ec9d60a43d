package docker

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"

	"github.com/airlock-ci/airlock/executors"
)

// ImageID implements executors.ImageIdentifier: the local image's ID.
func (e *Executor) ImageID(ctx context.Context, ref string) (string, error) {
	info, err := e.cli.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("image %s: %w locally", ref, executors.ErrImageNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("inspecting image %s: %w", ref, err)
	}
	return info.ID, nil
}

// PullImage implements executors.ImagePuller.
func (e *Executor) PullImage(ctx context.Context, ref string, auths []executors.RegistryAuth) (string, error) {
	if err := e.ensureImage(ctx, ref, executors.PullAlways, auths); err != nil {
		return "", err
	}
	return e.ImageID(ctx, ref)
}

// ensureImage makes ref available as the pull policy allows ("": the
// executor's), pulling with the job's credentials for its registry.
func (e *Executor) ensureImage(ctx context.Context, ref string, pull executors.PullPolicy, auths []executors.RegistryAuth) error {
	if pull == "" {
		pull = e.pull
	}
	host := executors.RegistryHost(ref)
	a := executors.AuthFor(host, auths)
	if pull != executors.PullAlways {
		_, err := e.cli.ImageInspect(ctx, ref)
		switch {
		case err == nil && !e.private.Has(ref):
			return nil
		case err == nil && pull == executors.PullNever:
			return fmt.Errorf("image %s: %w for this job: a job pulled it here with credentials for %s, so each job pulls it again with its own, and the pull policy is \"never\"", ref, executors.ErrImageNotFound, host)
		case err == nil:
			// Pulled again with this job's credentials, or none: the
			// layers are here, the registry decides.
		case !cerrdefs.IsNotFound(err):
			return fmt.Errorf("inspecting image %s: %w", ref, err)
		case pull == executors.PullNever:
			return fmt.Errorf("image %s: %w locally and the pull policy is \"never\"", ref, executors.ErrImageNotFound)
		}
	}
	if a != nil {
		// Recorded before the pull: a job without credentials that
		// finds the image meanwhile pulls it again too.
		if err := e.private.Add(ref); err != nil {
			e.log.Warn("could not record a private image (it is treated as private until this process ends)", "image", ref, "error", err)
		}
	}
	opts := image.PullOptions{}
	if a != nil {
		// Sent with this pull only (X-Registry-Auth); the engine keeps
		// it nowhere.
		enc, err := registry.EncodeAuthConfig(registry.AuthConfig{Username: a.Username, Password: a.Password, ServerAddress: host})
		if err != nil {
			return fmt.Errorf("image %s: encoding the job's credentials for %s: %w", ref, host, err)
		}
		opts.RegistryAuth = enc
	}
	rc, err := e.cli.ImagePull(ctx, ref, opts)
	if err == nil {
		err = executors.DrainProgress(rc)
	}
	if err != nil {
		with := "without credentials for " + host
		if a != nil {
			with = "with the job's credentials for " + host
		}
		return fmt.Errorf("image %s: %w and pulling it %s failed: %v", ref, executors.ErrImageNotFound, with, err)
	}
	return nil
}
