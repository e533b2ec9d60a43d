package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/client"
)

// MinDockerAPI is the oldest Docker Engine API Airlock supports (Docker
// 20.10).
const MinDockerAPI = "1.41"

// dockerTimeout bounds each Docker check.
const dockerTimeout = 10 * time.Second

// checkDocker pings the engine at host ("" = DOCKER_HOST or the default
// socket), checks its API version and, when image is set, whether the
// image is present (info only).
func checkDocker(ctx context.Context, host, image string) []Result {
	r := Result{Name: "docker"}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		r.Status = Fail
		r.Detail = "creating a Docker client: " + err.Error()
		r.Fix = "correct [docker] host in the configuration (or DOCKER_HOST)"
		return []Result{r}
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, dockerTimeout)
	defer cancel()

	if _, err := cli.Ping(ctx); err != nil {
		r.Status = Fail
		r.Detail = fmt.Sprintf("the engine at %s does not answer: %s", cli.DaemonHost(), oneLine(err.Error()))
		r.Fix = "start Docker (systemctl start docker) or set [docker] host in the configuration"
		if errors.Is(err, syscall.EACCES) || strings.Contains(err.Error(), "permission denied") {
			r.Fix = "run airlock doctor as root (the service runs as root)"
		}
		return []Result{r}
	}
	v, err := cli.ServerVersion(ctx)
	if err != nil {
		r.Status = Fail
		r.Detail = fmt.Sprintf("reading the engine's version at %s: %s", cli.DaemonHost(), oneLine(err.Error()))
		r.Fix = "check the engine: docker version"
		return []Result{r}
	}
	if versions.LessThan(v.APIVersion, MinDockerAPI) {
		r.Status = Fail
		r.Detail = fmt.Sprintf("Docker %s speaks API %s, older than %s", v.Version, v.APIVersion, MinDockerAPI)
		r.Fix = "upgrade Docker to 20.10 or newer"
		return []Result{r}
	}
	r.Detail = fmt.Sprintf("Docker %s (API %s) at %s", v.Version, v.APIVersion, cli.DaemonHost())
	rs := []Result{r}
	if image != "" {
		rs = append(rs, checkTestImage(ctx, cli, image))
	}
	return append(rs, checkEngineStorage(ctx, cli))
}

// slowStorage are storage drivers that make every container start cost
// more than it must: fuse-overlayfs runs a FUSE daemon per mount of a
// container's layers, vfs copies the whole image.
var slowStorage = map[string]string{
	"fuse-overlayfs": "every container's root file system is served by FUSE daemons of its own",
	"vfs":            "every container copies its whole image",
}

// checkEngineStorage reports the engine's storage driver (info only:
// Airlock works with any) and whether it remaps users.
func checkEngineStorage(ctx context.Context, cli *client.Client) Result {
	r := Result{Name: "docker storage"}
	info, err := cli.Info(ctx)
	if err != nil {
		r.Status = Info
		r.Detail = "reading the engine's info: " + oneLine(err.Error())
		return r
	}
	r.Detail = "storage driver " + info.Driver
	if why, slow := slowStorage[info.Driver]; slow {
		r.Status = Info
		r.Detail += ": " + why + ", which costs every job's start"
		r.Fix = `overlay2 is faster where the kernel and the backing file system allow it ("storage-driver" in /etc/docker/daemon.json)`
	}
	for _, o := range info.SecurityOptions {
		if strings.Contains(o, "name=userns") {
			r.Status = Info
			r.Detail += "; the engine remaps users (userns-remap): a job's network namespace belongs to its user namespace, in which the job holds no capabilities"
		}
	}
	return r
}

// checkTestImage says whether the test image is present (info only).
func checkTestImage(ctx context.Context, cli *client.Client, image string) Result {
	img := Result{Name: "test image"}
	switch _, err := cli.ImageInspect(ctx, image); {
	case err == nil:
		img.Detail = image + " present"
	case cerrdefs.IsNotFound(err):
		img.Status = Info
		img.Detail = image + " not present (only the tests and the demo job use it)"
		img.Fix = "make testimage (in the source tree)"
	default:
		img.Status = Warn
		img.Detail = fmt.Sprintf("inspecting %s: %s", image, oneLine(err.Error()))
	}
	return img
}
