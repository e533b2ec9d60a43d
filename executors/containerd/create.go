package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	capparmor "github.com/containerd/containerd/contrib/apparmor"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/pkg/apparmor"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
)

// idleScript keeps the task alive, doing nothing, until it is killed. As
// pid 1 of the task's pid namespace the shell reaps the orphans of the
// job's execs.
const idleScript = `trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done`

// Create implements executors.Executor: the image is made available as
// the pull policy allows, the container is created from a hardened spec
// and its task started with the idle entrypoint as its only process, in
// spec.NetNS when it is set (else in a network namespace of its own with
// only lo). On error nothing of it is left.
func (e *Executor) Create(ctx context.Context, spec executors.Spec) (executors.Container, error) {
	if spec.RunnerID == "" || spec.JobID == "" {
		return nil, errors.New("creating container: runner id and job id are required")
	}
	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	labels[executors.LabelRunner] = spec.RunnerID
	labels[executors.LabelJob] = spec.JobID
	c, err := e.create(ctx, spec, ContainerID(spec.RunnerID, spec.JobID), labels, nil)
	if err != nil {
		return nil, err // never a typed nil
	}
	return c, nil
}

// create makes the container id and starts its task (the idle
// entrypoint). With cmd set, it is filled with the image's entrypoint
// and command.
func (e *Executor) create(ctx context.Context, spec executors.Spec, id string, labels map[string]string, cmd *executors.ImageCommand) (*Container, error) {
	ctx = e.ctx(ctx)
	if lim := e.filled(spec.Limits); lim.CheckShm() != nil {
		return nil, fmt.Errorf("creating container for job %s: %w", spec.JobID, lim.CheckShm())
	}
	// The lease keeps the image's content and the new snapshot from the
	// garbage collector until the container record references them.
	lctx, doneLease, err := e.withLease(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = doneLease(context.WithoutCancel(ctx)) }()

	t0 := time.Now()
	img, err := e.image(lctx, spec.Image, spec.Pull, spec.RegistryAuth)
	if err != nil {
		return nil, err
	}
	if cmd != nil {
		ociImg, err := img.Spec(lctx)
		if err != nil {
			return nil, fmt.Errorf("reading image %s: %w", spec.Image, err)
		}
		*cmd = executors.ImageCommand{Entrypoint: ociImg.Config.Entrypoint, Cmd: ociImg.Config.Cmd}
	}
	t1 := time.Now()

	c := &Container{e: e, id: id, job: spec.JobID, netns: spec.NetNS, user: spec.User, pidfd: -1,
		image: img.Target().Digest.String()}
	// Made whole or not at all, like the task (start): a cancellation in
	// the middle of the call can leave the record made after the cleanup
	// below ran.
	nctx, cancel := context.WithTimeout(context.WithoutCancel(lctx), time.Minute)
	defer cancel()
	ctr, err := e.cli.NewContainer(nctx, id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(e.cfg.Snapshotter),
		containerd.WithNewSnapshot(id, img),
		containerd.WithRuntime(e.cfg.Runtime, nil),
		containerd.WithContainerLabels(labels),
		containerd.WithNewSpec(e.specOpts(img, spec)...),
	)
	if err != nil {
		err = fmt.Errorf("creating container for job %s: %w", spec.JobID, err)
		// The cached image may be what failed (removed from the store
		// meanwhile): the next job looks it up again.
		if name, nerr := NormalizeImage(spec.Image); nerr == nil {
			e.images.drop(name)
		}
		// A failed or cancelled create may have left the record or the
		// snapshot: remove by id.
		return nil, errors.Join(err, e.remove(context.WithoutCancel(ctx), id))
	}
	c.ctr = ctr
	t2 := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, errors.Join(fmt.Errorf("creating container for job %s: %w", spec.JobID, err), c.Destroy(context.WithoutCancel(ctx)))
	}
	if err := c.start(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("starting task of job %s: %w", spec.JobID, err), c.Destroy(context.WithoutCancel(ctx)))
	}
	e.log.Debug("container created", "job", spec.JobID, "container", id, "pid", c.pid, "netns", spec.NetNS,
		"image_took", t1.Sub(t0), "create_took", t2.Sub(t1), "start_took", time.Since(t2))
	return c, nil
}

// initArgs is the task's init: the step server, or the idle shell.
func (e *Executor) initArgs() []string {
	if e.stepd != "" {
		return []string{stepd.Target}
	}
	return []string{"/bin/sh", "-c", idleScript}
}

// start creates and starts the task (the idle entrypoint). With the step
// server, the task's stdio are the server's frames: stdin from a pipe the
// client writes, stdout read by the client, stderr kept as diagnostics.
func (c *Container) start(ctx context.Context) error {
	creator := cio.NullIO
	var diag *stepd.Diag
	if c.e.stepd != "" {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		diag = &stepd.Diag{Limit: 4096}
		creator = cio.NewCreator(cio.WithStreams(inR, outW, diag))
		c.step = stepd.NewClient(inW, func() error {
			inW.Close()
			return outW.Close()
		}, c.job)
		go c.step.Run(outR, diag.String)
	}
	// The task is made whole or not at all: a cancellation in the middle
	// of NewTask leaves containerd making a task (and its cgroups) that
	// the caller never hears of. Its exit is awaited for the container's
	// life, not the caller's context's. A cancellation is honoured once
	// the task is known, so that Destroy removes it.
	life := context.WithoutCancel(ctx)
	tctx, cancel := context.WithTimeout(life, time.Minute)
	defer cancel()
	task, err := c.ctr.NewTask(tctx, creator)
	if err != nil {
		return err
	}
	c.task = task
	exited, err := task.Wait(life)
	if err != nil {
		return err
	}
	c.exited = exited
	if c.step != nil {
		c.exited = c.endStepOnExit(exited, diag)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := task.Start(tctx); err != nil {
		return err
	}
	c.pid = int(task.Pid())
	if fd, err := unix.PidfdOpen(c.pid, 0); err == nil {
		c.pidfd = fd
	}
	if c.step != nil {
		if err := c.step.Ready(10 * time.Second); err != nil {
			return fmt.Errorf("the step server %s did not start (if the runtime cannot run it here, set [containerd] step_server = \"off\"): %w", c.e.stepd, err)
		}
	}
	return nil
}

// stepDrain is how long the step server's last output is given to be
// copied after its task ended, before its stream is closed.
const stepDrain = 100 * time.Millisecond

// endStepOnExit forwards the task's exit and, once the task has ended,
// ends the step server's stream: the shim keeps the task's stdout open
// until the task is deleted, so an exec in a task whose init ended (a job
// that stopped its step server, the kernel's OOM killer) would otherwise
// wait for the job's timeout.
func (c *Container) endStepOnExit(exited <-chan containerd.ExitStatus, diag *stepd.Diag) <-chan containerd.ExitStatus {
	ch := make(chan containerd.ExitStatus, 1)
	go func() {
		st, ok := <-exited
		if ok {
			ch <- st
		}
		close(ch)
		time.Sleep(stepDrain)
		fmt.Fprintf(diag, "the job's container stopped (its init exited with status %d)", st.ExitCode())
		_ = c.step.Close()
	}()
	return ch
}

// specOpts builds the hardened spec: no capabilities, no new privileges,
// the default seccomp profile, an AppArmor profile where the host has
// AppArmor, the default masked and read-only /proc paths, pids/memory/CPU limits, the runner's read-only mounts, and an
// environment with nothing but the image's own variables.
func (e *Executor) specOpts(img containerd.Image, spec executors.Spec) []oci.SpecOpts {
	lim := e.filled(spec.Limits)
	const period = 100000
	opts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs(e.initArgs()...),
		oci.WithHostname("airlock"),
		oci.WithCapabilities(nil),
		withNoAmbient,
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
		oci.WithPidsLimit(lim.Pids),
		oci.WithMemoryLimit(uint64(lim.Memory)),
		withMemorySwap(lim.Memory),
		oci.WithCPUCFS(int64(lim.CPUs*period), period),
		withDockerNofile,
	}
	if apparmor.HostSupports() {
		// Generated from containerd's template and loaded once (like
		// Docker's docker-default).
		opts = append(opts, capparmor.WithDefaultProfile("airlock-default"))
	}
	if spec.WorkDir != "" {
		opts = append(opts, oci.WithProcessCwd(spec.WorkDir))
	}
	if spec.User != "" {
		opts = append(opts, oci.WithUser(spec.User), oci.WithAdditionalGIDs(spec.User))
	}
	if spec.NetNS != "" {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: spec.NetNS}))
	} else {
		// A namespace of its own (only lo), configured as the sandbox
		// configures a joined one.
		opts = append(opts, withSysctls(map[string]string{
			"net.ipv6.conf.all.disable_ipv6":     "1",
			"net.ipv6.conf.default.disable_ipv6": "1",
			"net.ipv4.ping_group_range":          "1 0",
		}))
	}
	var mounts []specs.Mount
	if lim.ReadOnly {
		opts = append(opts, oci.WithRootFSReadonly())
		mounts = append(mounts, tmpfs("/tmp", "size=1g"))
		if spec.WorkDir != "" {
			mounts = append(mounts, tmpfs(spec.WorkDir, "exec", "size=4g"))
		}
	} else if spec.WorkDir != "" {
		// The work dir exists and is writable even if the image lacks it.
		mounts = append(mounts, tmpfs(spec.WorkDir, "exec", "size=4g"))
	}
	// The job's own cgroups, read-only, as Docker shows them.
	mounts = append(mounts, specs.Mount{Type: "cgroup", Source: "cgroup", Destination: "/sys/fs/cgroup",
		Options: []string{"ro", "nosuid", "noexec", "nodev"}})
	for _, m := range spec.Mounts {
		mounts = append(mounts, specs.Mount{Type: "bind", Source: m.Source, Destination: m.Target,
			Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	}
	if e.stepd != "" {
		mounts = append(mounts, specs.Mount{Type: "bind", Source: e.stepd, Destination: stepd.Target,
			Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	}
	if e.hostsFile != "" && !executors.MountsHosts(spec.Mounts) {
		// localhost resolves without asking the gateway, as in Docker.
		mounts = append(mounts, specs.Mount{Type: "bind", Source: e.hostsFile, Destination: "/etc/hosts",
			Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	}
	opts = append(opts, oci.WithMounts(mounts), withShmSize(lim.ShmSize))
	return opts
}

// filled is l with its zero fields the executor's defaults.
func (e *Executor) filled(l executors.Limits) executors.Limits {
	if l.Pids == 0 {
		l.Pids = e.cfg.PidsLimit
	}
	if l.Memory == 0 {
		l.Memory = e.mem
	}
	if l.CPUs == 0 {
		l.CPUs = e.cfg.CPUs
	}
	if l.ShmSize == 0 {
		l.ShmSize = e.shm
	}
	l.ReadOnly = l.ReadOnly || e.cfg.ReadOnly
	return l
}

// withShmSize sets the size of the spec's /dev/shm (containerd's default
// spec has one of 64 MiB).
func withShmSize(n int64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		for i, m := range s.Mounts {
			if m.Destination != "/dev/shm" {
				continue
			}
			opts := m.Options[:0:0]
			for _, o := range m.Options {
				if !strings.HasPrefix(o, "size=") {
					opts = append(opts, o)
				}
			}
			s.Mounts[i].Options = append(opts, "size="+strconv.FormatInt(n, 10))
			return nil
		}
		return errors.New("the container's spec has no /dev/shm")
	}
}

func tmpfs(dst string, opts ...string) specs.Mount {
	return specs.Mount{Type: "tmpfs", Source: "tmpfs", Destination: dst,
		Options: append([]string{"nosuid", "nodev", "mode=1777"}, opts...)}
}

func withNoAmbient(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	if s.Process != nil && s.Process.Capabilities != nil {
		s.Process.Capabilities.Ambient = nil
		s.Process.Capabilities.Inheritable = nil
	}
	return nil
}

func withMemorySwap(limit int64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux != nil && s.Linux.Resources != nil && s.Linux.Resources.Memory != nil {
			s.Linux.Resources.Memory.Swap = &limit
		}
		return nil
	}
}

func withSysctls(kv map[string]string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		for k, v := range kv {
			s.Linux.Sysctl[k] = v
		}
		return nil
	}
}

// withDockerNofile drops the default spec's open-files limit of 1024,
// which breaks common build tools: the task inherits the daemon's limit,
// as Docker's containers do.
func withDockerNofile(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	if s.Process == nil {
		return nil
	}
	var keep []specs.POSIXRlimit
	for _, r := range s.Process.Rlimits {
		if r.Type != "RLIMIT_NOFILE" {
			keep = append(keep, r)
		}
	}
	s.Process.Rlimits = keep
	return nil
}

// waitExit waits (bounded) for a task or process to exit.
func waitExit(ch <-chan containerd.ExitStatus, d time.Duration) (containerd.ExitStatus, bool) {
	if ch == nil {
		return containerd.ExitStatus{}, true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case st := <-ch:
		return st, true
	case <-t.C:
		return containerd.ExitStatus{}, false
	}
}
