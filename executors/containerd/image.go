package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/remotes"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	dockerclient "github.com/docker/docker/client"

	"github.com/airlock-ci/airlock/executors"
)

// leaseTTL bounds a lease that a crash left behind: its content and
// snapshots become garbage afterwards.
const leaseTTL = 30 * time.Minute

// imageCache remembers images known to be unpacked, so that a job's
// Create costs one image lookup after the first (is the name's target
// still the one unpacked?) instead of walking the image's content (pull
// policy "always" bypasses it).
type imageCache struct {
	mu sync.Mutex
	m  map[string]containerd.Image
}

func (c *imageCache) get(name string) containerd.Image {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[name]
}

func (c *imageCache) put(name string, img containerd.Image) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]containerd.Image{}
	}
	c.m[name] = img
}

func (c *imageCache) drop(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, name)
}

// importCall is one image fetch in flight; concurrent Creates of the same
// image wait for it instead of importing it again.
type importCall struct {
	done chan struct{}
	img  containerd.Image
	err  error
}

// NormalizeImage returns the fully qualified name containerd stores an
// image under ("busybox" is "docker.io/library/busybox:latest").
func NormalizeImage(ref string) (string, error) {
	n, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", ref, err)
	}
	return n.String(), nil
}

// image returns the spec's image, unpacked for the snapshotter: from the
// namespace's store, else imported from Docker's store, else pulled, as
// the pull policy allows ("": the executor's), with the job's registry
// credentials. ctx carries the caller's lease.
func (e *Executor) image(ctx context.Context, ref string, pull executors.PullPolicy, auths []executors.RegistryAuth) (containerd.Image, error) {
	name, err := NormalizeImage(ref)
	if err != nil {
		return nil, err
	}
	if pull == "" {
		pull = e.pull
	}
	a := executors.AuthFor(executors.RegistryHost(ref), auths)
	if a != nil {
		// Recorded before the pull: a job without credentials that finds
		// the image meanwhile pulls it again too.
		if err := e.private.Add(ref); err != nil {
			e.log.Warn("could not record a private image (it is treated as private until this process ends)", "image", ref, "error", err)
		}
	}
	if pull != executors.PullAlways && e.private.Has(ref) {
		// A job pulled it with credentials: each job pulls it again with
		// its own, or none (the registry decides; the layers are here).
		if pull == executors.PullNever {
			return nil, fmt.Errorf("image %s: %w for this job: a job pulled it here with credentials for %s, so each job pulls it again with its own, and the pull policy is \"never\"", ref, executors.ErrImageNotFound, executors.RegistryHost(ref))
		}
		pull = executors.PullAlways
	}
	if pull != executors.PullAlways {
		if img := e.images.get(name); img != nil {
			// The name may have been given another image since (a pull or
			// an import into the namespace): one lookup tells.
			cur, err := e.cli.GetImage(ctx, name)
			if err == nil && cur.Target().Digest == img.Target().Digest && e.movedInDocker(ctx, ref, cur) == "" {
				return img, nil
			}
			e.images.drop(name)
		}
	}
	// Imports in flight are shared only between jobs with the same
	// credentials (or none).
	key := name
	if a != nil {
		sum := sha256.Sum256([]byte(a.Username + "\x00" + a.Password))
		key += "\x00" + hex.EncodeToString(sum[:])
	}
	e.mu.Lock()
	if c, ok := e.imps[key]; ok {
		e.mu.Unlock()
		select {
		case <-c.done:
			return c.img, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &importCall{done: make(chan struct{})}
	e.imps[key] = c
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.imps, key)
		e.mu.Unlock()
		close(c.done)
	}()
	c.img, c.err = e.fetchImage(ctx, ref, name, pull, auths)
	if c.err == nil {
		e.images.put(name, c.img)
	}
	return c.img, c.err
}

// ImageID implements executors.ImageIdentifier: the digest of the target
// of the namespace's image named ref.
func (e *Executor) ImageID(ctx context.Context, ref string) (string, error) {
	name, err := NormalizeImage(ref)
	if err != nil {
		return "", err
	}
	img, err := e.cli.GetImage(e.ctx(ctx), name)
	if errdefs.IsNotFound(err) {
		return "", fmt.Errorf("image %s: %w in containerd namespace %s", ref, executors.ErrImageNotFound, e.cfg.Namespace)
	}
	if err != nil {
		return "", fmt.Errorf("looking up image %s: %w", ref, err)
	}
	if now := e.movedInDocker(ctx, ref, img); now != "" {
		// The next Create imports it again: not the image made before.
		return "docker:" + now, nil
	}
	return img.Target().Digest.String(), nil
}

// labelDockerID is set on an image imported from Docker to the ID it had
// there, so that an update in Docker (a pull, a build or a tag under the
// same name) is imported again.
const labelDockerID = "io.airlock.docker-image-id"

// movedInDocker returns the ID of Docker's image ref when img was
// imported from Docker and that is another image now, else "". With
// Docker unreachable, or the image gone from it, the namespace's stays.
func (e *Executor) movedInDocker(ctx context.Context, ref string, img containerd.Image) string {
	was := img.Labels()[labelDockerID]
	if was == "" {
		return ""
	}
	if now := e.dockerImageID(ctx, ref); now != "" && now != was {
		return now
	}
	return ""
}

// dockerImageID is the ID of Docker's image ref ("" when Docker is off,
// unreachable or has none).
func (e *Executor) dockerImageID(ctx context.Context, ref string) string {
	dc, err := e.dockerClient()
	if err != nil || dc == nil {
		return ""
	}
	info, err := dc.ImageInspect(ctx, ref)
	if err != nil {
		return ""
	}
	return info.ID
}

// dockerClient is the executor's client of the Docker engine it imports
// from (nil with docker_host = "none"), made once.
func (e *Executor) dockerClient() (*dockerclient.Client, error) {
	if e.cfg.DockerHost == NoDocker {
		return nil, nil
	}
	e.dockerOnce.Do(func() {
		opts := []dockerclient.Opt{dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation()}
		if e.cfg.DockerHost != "" {
			opts = append(opts, dockerclient.WithHost(e.cfg.DockerHost))
		}
		e.docker, e.dockerErr = dockerclient.NewClientWithOpts(opts...)
	})
	return e.docker, e.dockerErr
}

// PullImage implements executors.ImagePuller.
func (e *Executor) PullImage(ctx context.Context, ref string, auths []executors.RegistryAuth) (string, error) {
	ctx = e.ctx(ctx)
	lctx, done, err := e.withLease(ctx)
	if err != nil {
		return "", err
	}
	defer func() { _ = done(context.WithoutCancel(ctx)) }()
	img, err := e.image(lctx, ref, executors.PullAlways, auths)
	if err != nil {
		return "", err
	}
	return img.Target().Digest.String(), nil
}

func (e *Executor) fetchImage(ctx context.Context, ref, name string, pull executors.PullPolicy, auths []executors.RegistryAuth) (containerd.Image, error) {
	if pull != executors.PullAlways {
		img, err := e.cli.GetImage(ctx, name)
		switch {
		case err == nil && e.movedInDocker(ctx, ref, img) == "":
			return img, e.unpack(ctx, img)
		case err != nil && !errdefs.IsNotFound(err):
			return nil, fmt.Errorf("looking up image %s: %w", ref, err)
		}
		img, found, err := e.importFromDocker(ctx, ref, name)
		if err != nil || found {
			return img, err
		}
		if pull == executors.PullNever {
			return nil, fmt.Errorf("image %s: %w in containerd namespace %s or in Docker, and the pull policy is \"never\"", ref, executors.ErrImageNotFound, e.cfg.Namespace)
		}
	}
	img, err := e.cli.Pull(ctx, name,
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(e.cfg.Snapshotter),
		containerd.WithResolver(e.resolver(auths)))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w and pulling it failed: %v", ref, executors.ErrImageNotFound, err)
	}
	return img, nil
}

func (e *Executor) unpack(ctx context.Context, img containerd.Image) error {
	ok, err := img.IsUnpacked(ctx, e.cfg.Snapshotter)
	if err == nil && !ok {
		err = img.Unpack(ctx, e.cfg.Snapshotter)
	}
	if err != nil {
		return fmt.Errorf("unpacking image %s for snapshotter %s: %w", img.Name(), e.cfg.Snapshotter, err)
	}
	return nil
}

// importFromDocker copies the image from Docker's store (`docker save`
// through the engine API) into the namespace and unpacks it. found is
// false when Docker is off, not reachable or does not have the image.
func (e *Executor) importFromDocker(ctx context.Context, ref, name string) (img containerd.Image, found bool, err error) {
	dc, err := e.dockerClient()
	if err != nil {
		return nil, false, fmt.Errorf("creating Docker client to import %s: %w", ref, err)
	}
	if dc == nil {
		return nil, false, nil
	}
	info, err := dc.ImageInspect(ctx, ref)
	if err != nil {
		if !errdefs.IsNotFound(err) && !dockerclient.IsErrConnectionFailed(err) {
			e.log.Debug("Docker cannot tell about image", "image", ref, "error", err)
		}
		return nil, false, nil
	}
	t0 := time.Now()
	rc, err := dc.ImageSave(ctx, []string{ref})
	if err != nil {
		return nil, true, fmt.Errorf("exporting image %s from Docker: %w", ref, err)
	}
	defer rc.Close()
	imgs, err := e.cli.Import(ctx, rc)
	if err != nil {
		return nil, true, fmt.Errorf("importing image %s from Docker into containerd: %w", ref, err)
	}
	for _, i := range imgs {
		if i.Name != name {
			continue
		}
		if i.Labels == nil {
			i.Labels = map[string]string{}
		}
		i.Labels[labelDockerID] = info.ID
		if i, err = e.cli.ImageService().Update(ctx, i, "labels."+labelDockerID); err != nil {
			return nil, true, fmt.Errorf("labelling image %s imported from Docker: %w", ref, err)
		}
		img := containerd.NewImage(e.cli, i)
		if err := e.unpack(ctx, img); err != nil {
			return nil, true, err
		}
		e.log.Info("imported image from Docker", "image", name, "duration", time.Since(t0))
		return img, true, nil
	}
	return nil, true, fmt.Errorf("importing image %s from Docker: the archive has no image named %s", ref, name)
}

// resolver fetches from registries with the job's credentials, else the
// configured ones; a registry on loopback over plain HTTP, as Docker
// allows by default.
func (e *Executor) resolver(auths []executors.RegistryAuth) remotes.Resolver {
	creds := func(host string) (string, string, error) {
		if host == "registry-1.docker.io" {
			host = "docker.io"
		}
		if a := executors.AuthFor(host, auths); a != nil {
			return a.Username, a.Password, nil
		}
		return e.credentials(host)
	}
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(
			docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(creds))),
			docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
}

// credentials returns the configured username and password for a
// registry host; no entry means anonymous.
func (e *Executor) credentials(host string) (string, string, error) {
	for _, r := range e.cfg.Registries {
		if !strings.EqualFold(r.Host, host) && !(host == "registry-1.docker.io" && r.Host == "docker.io") {
			continue
		}
		if st, err := os.Stat(r.PasswordFile); err == nil && st.Mode().Perm()&0o077 != 0 {
			return "", "", fmt.Errorf("the password file of registry %s (%s) is readable by others (mode %04o): chmod 600 it", r.Host, r.PasswordFile, st.Mode().Perm())
		}
		b, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			return "", "", fmt.Errorf("reading the password of registry %s: %w", r.Host, err)
		}
		return r.Username, strings.TrimSpace(string(b)), nil
	}
	return "", "", nil
}

// withLease returns ctx with a new lease that keeps what is made under it
// (content, snapshots) from the garbage collector until done, or until it
// expires when a crash prevented done.
// The lease is created whatever ctx does (a cancelled request may still
// have created it, and nobody would delete it then).
func (e *Executor) withLease(ctx context.Context) (context.Context, func(context.Context) error, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	l, err := e.cli.LeasesService().Create(cctx, leases.WithRandomID(), leases.WithExpiration(leaseTTL))
	if err != nil {
		return nil, nil, fmt.Errorf("creating containerd lease: %w", err)
	}
	done := func(ctx context.Context) error {
		return e.cli.LeasesService().Delete(ctx, l)
	}
	return leases.WithLease(ctx, l.ID), done, nil
}
