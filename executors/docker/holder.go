package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
)

// HolderImage is the image of network holders: one layer of empty
// directories, imported by the executor the first time it needs one (no
// registry). The holder's only process is the step server, mounted.
const HolderImage = "airlock/netns-holder:1"

// LabelHolder marks a network holder's container.
const LabelHolder = "io.airlock.netns-holder"

// holderLimits bound a holder, which runs one sleeping process (of a few
// threads: the pids limit counts the Go runtime's).
var holderLimits = executors.Limits{Pids: 16, Memory: 16 << 20, CPUs: 0.1, ReadOnly: true}

var (
	_ executors.NetworkHolder = (*Executor)(nil)
	_ executors.Liveness      = (*holder)(nil)
)

// HoldsNetworks implements executors.NetworkHolder: a holder's process is
// the step server.
func (e *Executor) HoldsNetworks() error {
	if e.stepd == "" {
		return errors.New("a network holder runs the step server, and there is none ([docker] step_server)")
	}
	return nil
}

// HoldNetwork implements executors.NetworkHolder: a container with a new
// network namespace of runc's (as a job container's, with the same
// sysctls), the step server waiting to be stopped as its only process, no
// capabilities, a read-only root, a user of no account and tight limits.
func (e *Executor) HoldNetwork(ctx context.Context, runnerID, id string, labels map[string]string) (executors.Holder, error) {
	if err := e.HoldsNetworks(); err != nil {
		return nil, err
	}
	if runnerID == "" || id == "" {
		return nil, errors.New("creating a network holder: runner id and id are required")
	}
	img, err := e.holderImage(ctx)
	if err != nil {
		return nil, err
	}
	all := map[string]string{}
	for k, v := range labels {
		all[k] = v
	}
	all[executors.LabelRunner], all[executors.LabelJob], all[LabelHolder] = runnerID, id, "1"
	hc := e.hardened("none", holderLimits, nil)
	noInit := false
	hc.Init = &noInit // the step server is PID 1 and ends on SIGTERM
	hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: e.stepd, Target: stepd.Target, ReadOnly: true})
	hc.Sysctls = netSysctls()
	hc.LogConfig = container.LogConfig{Type: "none"}
	cfg := &container.Config{
		Image:           img,
		Entrypoint:      []string{stepd.Target, stepd.HoldArg},
		User:            "65534:65534",
		Env:             []string{"GOMAXPROCS=1"},
		Labels:          all,
		NetworkDisabled: true,
	}
	// As in Create: engine calls are bounded, not cut short by ctx.
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), engineCallTimeout)
	defer cancel()
	name := "airlock-" + runnerID + "-" + id
	resp, err := e.cli.ContainerCreate(octx, cfg, hc, nil, nil, name)
	if cerrdefs.IsNotFound(err) {
		// The image went since it was imported (docker image prune -a):
		// import it again, once.
		e.holderMu.Lock()
		e.holderID = ""
		e.holderMu.Unlock()
		if cfg.Image, err = e.holderImage(ctx); err != nil {
			return nil, err
		}
		resp, err = e.cli.ContainerCreate(octx, cfg, hc, nil, nil, name)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("creating network holder %s: %w", id, err), e.Remove(context.WithoutCancel(ctx), name))
	}
	h := &holder{e: e, id: resp.ID, pidfd: -1}
	fail := func(what string, err error) (executors.Holder, error) {
		return nil, errors.Join(fmt.Errorf("%s network holder %s: %w", what, id, err), h.Destroy(context.WithoutCancel(ctx)))
	}
	if ctx.Err() != nil {
		return fail("creating", context.Cause(ctx))
	}
	if err := e.cli.ContainerStart(octx, resp.ID, container.StartOptions{}); err != nil {
		return fail("starting", err)
	}
	if h.pid, err = e.runningPid(octx, resp.ID); err != nil {
		return fail("inspecting", err)
	}
	if err := ownNetNS(h.pid); err != nil {
		return fail("isolating", err)
	}
	if fd, err := unix.PidfdOpen(h.pid, 0); err == nil {
		h.pidfd = fd
	}
	return h, nil
}

// runningPid is the host pid of a running container's init.
func (e *Executor) runningPid(ctx context.Context, id string) (int, error) {
	info, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return 0, err
	}
	if info.State == nil || info.State.Pid == 0 {
		return 0, errors.New("container is not running")
	}
	return info.State.Pid, nil
}

// holderPid checks that id is a running network holder of runnerID (a
// job container joins no other container's namespace) and returns its
// init's pid.
func (e *Executor) holderPid(ctx context.Context, runnerID, id string) (int, error) {
	info, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("network holder %s: %w", shortID(id), err)
	}
	if info.Config == nil || info.Config.Labels[LabelHolder] != "1" || info.Config.Labels[executors.LabelRunner] != runnerID {
		return 0, fmt.Errorf("container %s is not a network holder of runner %s", shortID(id), runnerID)
	}
	if info.State == nil || info.State.Pid == 0 {
		return 0, fmt.Errorf("network holder %s is not running", shortID(id))
	}
	return info.State.Pid, nil
}

// holderImage returns the ID of HolderImage, importing it first if the
// engine has none.
func (e *Executor) holderImage(ctx context.Context) (string, error) {
	e.holderMu.Lock()
	defer e.holderMu.Unlock()
	if e.holderID != "" {
		return e.holderID, nil
	}
	ref := e.holderRef
	if ref == "" {
		ref = HolderImage
	}
	info, err := e.cli.ImageInspect(ctx, ref)
	if err != nil {
		rc, ierr := e.cli.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(holderLayer()), SourceName: "-"}, ref, image.ImportOptions{})
		if ierr != nil {
			return "", fmt.Errorf("importing the network holder image %s: %w", ref, ierr)
		}
		if ierr = executors.DrainProgress(rc); ierr != nil {
			return "", fmt.Errorf("importing the network holder image %s: %w", ref, ierr)
		}
		if info, err = e.cli.ImageInspect(ctx, ref); err != nil {
			return "", fmt.Errorf("the network holder image %s: %w", ref, err)
		}
	}
	e.holderID = info.ID
	return e.holderID, nil
}

// holderLayer is the holder image's only layer: the directories runc
// mounts on, nothing else.
func holderLayer() []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, d := range []string{"dev/", "etc/", "proc/", "sys/", "tmp/"} {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755})
	}
	_ = tw.Close()
	return b.Bytes()
}

// holder is a running network holder.
type holder struct {
	e     *Executor
	id    string
	pid   int
	pidfd int // of its process (-1: none)

	mu      sync.Mutex
	removed bool
}

func (h *holder) ID() string { return h.id }

func (h *holder) NetNS() string { return fmt.Sprintf("/proc/%d/ns/net", h.pid) }

// Alive implements executors.Liveness.
func (h *holder) Alive() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.removed && executors.PidfdAlive(h.pidfd)
}

// Destroy force-removes the holder (SIGKILL: it holds nothing to save).
func (h *holder) Destroy(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.removed {
		return nil
	}
	if err := h.e.Remove(ctx, h.id); err != nil {
		return err
	}
	h.removed = true
	if h.pidfd >= 0 {
		_ = unix.Close(h.pidfd)
		h.pidfd = -1
	}
	return nil
}

// sameNetNS checks that two processes share a network namespace.
func sameNetNS(pid, holderPid int) error {
	a, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return fmt.Errorf("reading the network namespace: %w", err)
	}
	b, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", holderPid))
	if err != nil {
		return fmt.Errorf("reading the network holder's namespace: %w", err)
	}
	if a != b {
		return fmt.Errorf("the container is in %s, not its network holder's %s", a, b)
	}
	return nil
}
