// Package docker runs jobs in hardened containers on a Docker engine.
//
// A job container starts with an idle entrypoint and no network (the
// sandbox plumbs one in); every step is an exec whose environment is given
// at exec time, so no job variable or credential is visible in the
// container's configuration (`docker inspect`).
package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
)

// Config configures the Docker executor.
type Config struct {
	// Host is the engine address ("unix:///var/run/docker.sock"); empty
	// takes DOCKER_HOST or the default socket.
	Host string `toml:"host"`
	// Image is the default image for jobs that name none (GitLab jobs
	// without image:).
	Image string `toml:"image"`
	// Pull is the default pull policy for specs that don't set one.
	Pull string `toml:"pull_policy"`
	// AllowedPull are the pull policies a job may ask for (GitLab's
	// image:pull_policy); empty: Pull alone.
	AllowedPull []string `toml:"allowed_pull_policies"`
	// AllowedImages and AllowedServices are the images a job may run in
	// and beside it (glob patterns, gitlab-runner's allowed_images and
	// allowed_services); empty: any. The default image is always allowed.
	AllowedImages   []string `toml:"allowed_images"`
	AllowedServices []string `toml:"allowed_services"`
	// Default limits for job containers.
	PidsLimit int64   `toml:"pids_limit"`
	Memory    string  `toml:"memory"` // e.g. "2g", "512m"
	CPUs      float64 `toml:"cpus"`
	// Limits of service containers (service_memory etc.; zero: the above).
	ServiceLimits
	// Grace is how long processes get between SIGTERM and SIGKILL.
	Grace time.Duration `toml:"stop_grace"`
	// ReadOnly gives job containers a read-only root filesystem; the work
	// dir and /tmp are then writable tmpfs mounts of WorkDirSize and
	// TmpSize (default 4g and 1g), which bounds the job's disk use.
	ReadOnly    bool   `toml:"read_only"`
	WorkDirSize string `toml:"work_dir_size"`
	TmpSize     string `toml:"tmp_size"`
	// ShmSize is the size of job containers' /dev/shm (default 64m, as
	// the engine's), at most Memory: browsers under test want more.
	ShmSize string `toml:"shm_size"`
	// StepServer is the host path of the static airlock-stepd, the job
	// container's entrypoint that starts each step itself (a fork instead
	// of the engine's exec round trips). Empty takes airlock-stepd next to
	// the airlock binary when it is there; "off" runs every step as an
	// engine exec.
	StepServer string `toml:"step_server"`
	// RuntimeDir holds the executor's host files (the jobs' read-only
	// /etc/hosts); default /run/airlock.
	RuntimeDir string `toml:"-"`
	// StateDir holds what the executor keeps across reboots (the
	// repositories pulled with a job's credentials); default RuntimeDir.
	StateDir string `toml:"-"`
}

// Default tmpfs sizes with ReadOnly.
const (
	DefaultWorkDirSize = 4 << 30
	DefaultTmpSize     = 1 << 30
)

// Limits returns the container limits the configuration sets (sizes
// parsed; Validate reports bad ones): the runner passes them in every
// Spec.
func (c Config) Limits() executors.Limits {
	l := executors.Limits{ReadOnly: c.ReadOnly}
	if c.WorkDirSize != "" {
		l.WorkDirSize, _ = ParseBytes(c.WorkDirSize)
	}
	if c.TmpSize != "" {
		l.TmpSize, _ = ParseBytes(c.TmpSize)
	}
	return l
}

// ShmBytes parses ShmSize ("" = executors.DefaultShmSize).
func (c Config) ShmBytes() (int64, error) {
	if c.ShmSize == "" {
		return executors.DefaultShmSize, nil
	}
	return ParseBytes(c.ShmSize)
}

// ValidShm checks a shm_size against the memory limit it shares.
func ValidShm(prefix, shm, memory string) error {
	if shm == "" {
		return nil
	}
	n, err := ParseBytes(shm)
	if err != nil {
		return fmt.Errorf("%s.shm_size: %w", prefix, err)
	}
	mem := int64(DefaultMemory)
	if memory != "" {
		if mem, err = ParseBytes(memory); err != nil {
			return nil // memory's own error says it
		}
	}
	if n > mem {
		return fmt.Errorf("%s.shm_size %s: more than the containers' memory limit (%s.memory), which /dev/shm counts against", prefix, shm, prefix)
	}
	return nil
}

// Defaults for Config's zero fields.
const (
	DefaultPidsLimit = 1024
	DefaultMemory    = 2 << 30
	DefaultCPUs      = 2
	DefaultGrace     = 10 * time.Second
)

// MemoryBytes parses Memory ("" = DefaultMemory).
func (c Config) MemoryBytes() (int64, error) {
	if c.Memory == "" {
		return DefaultMemory, nil
	}
	return ParseBytes(c.Memory)
}

// Validate returns every problem with the configuration, naming its key
// under prefix (e.g. "docker").
func (c Config) Validate(prefix string) []error {
	var errs []error
	if _, err := executors.ParsePullPolicy(c.Pull); err != nil {
		errs = append(errs, fmt.Errorf("%s.pull_policy: %w", prefix, err))
	}
	if _, err := executors.ParsePullPolicies(prefix+".allowed_pull_policies", c.AllowedPull); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, executors.ValidImagePatterns(prefix+".allowed_images", c.AllowedImages)...)
	errs = append(errs, executors.ValidImagePatterns(prefix+".allowed_services", c.AllowedServices)...)
	if c.PidsLimit < 0 {
		errs = append(errs, fmt.Errorf("%s.pids_limit: must not be negative", prefix))
	}
	if _, err := c.MemoryBytes(); err != nil {
		errs = append(errs, fmt.Errorf("%s.memory: %w", prefix, err))
	}
	if c.CPUs < 0 {
		errs = append(errs, fmt.Errorf("%s.cpus: must not be negative", prefix))
	}
	if err := ValidShm(prefix, c.ShmSize, c.Memory); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.ServiceLimits.Validate(prefix, c.ShmSize)...)
	if c.Grace < 0 {
		errs = append(errs, fmt.Errorf("%s.stop_grace: must not be negative", prefix))
	}
	for key, v := range map[string]string{"work_dir_size": c.WorkDirSize, "tmp_size": c.TmpSize} {
		if v == "" {
			continue
		}
		if _, err := ParseBytes(v); err != nil {
			errs = append(errs, fmt.Errorf("%s.%s: %w", prefix, key, err))
		} else if !c.ReadOnly {
			errs = append(errs, fmt.Errorf("%s.%s: applies only with %s.read_only = true", prefix, key, prefix))
		}
	}
	return errs
}

// ParseBytes parses a size like "512m", "2g", "1048576".
func ParseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "b")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, strings.TrimSuffix(t, "k")
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, strings.TrimSuffix(t, "m")
	case strings.HasSuffix(t, "g"):
		mult, t = 1<<30, strings.TrimSuffix(t, "g")
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional k, m or g suffix", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mult, nil
}

// Executor creates job containers on a Docker engine.
type Executor struct {
	cli   *client.Client
	cfg   Config
	log   hclog.Logger
	pull  executors.PullPolicy
	mem   int64
	grace time.Duration
	stepd string // host path of the step server; "" for engine execs
	// hostsFile is the read-only /etc/hosts of every job that mounts none.
	hostsFile string
	private   *executors.PrivateImages

	holderMu  sync.Mutex
	holderRef string // the holder image's name ("": HolderImage; tests set another)
	holderID  string // its ID, once known
}

var (
	_ executors.Executor        = (*Executor)(nil)
	_ executors.ImageIdentifier = (*Executor)(nil)
	_ executors.ImagePuller     = (*Executor)(nil)
)

// New connects to the engine (negotiating the API version: the engine may
// speak an older API such as 1.41) and checks that it answers.
func New(ctx context.Context, cfg Config, log hclog.Logger) (*Executor, error) {
	if errs := cfg.Validate("docker"); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("creating Docker client: %w", err)
	}
	if _, err := cli.Ping(ctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("connecting to the Docker engine at %s: %w", cli.DaemonHost(), err)
	}
	pull, _ := executors.ParsePullPolicy(cfg.Pull)
	mem, _ := cfg.MemoryBytes()
	grace := cfg.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named("docker")
	stepServer, why, err := ResolveStepServer(cfg.StepServer)
	if err != nil {
		cli.Close()
		return nil, err
	}
	if stepServer == "" {
		log.Info("steps run as engine execs (slower): no step server", "reason", why)
	}
	runDir := cfg.RuntimeDir
	if runDir == "" {
		runDir = "/run/airlock"
	}
	hosts := filepath.Join(runDir, "docker", "hosts")
	if err := executors.WriteHostsFile(hosts, executors.LocalhostLines); err != nil {
		cli.Close()
		return nil, err
	}
	keep := cfg.StateDir
	if keep == "" {
		keep = runDir
	}
	private, err := executors.LoadPrivateImages(filepath.Join(keep, "docker", "private-images"))
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &Executor{cli: cli, cfg: cfg, log: log, pull: pull, mem: mem, grace: grace, stepd: stepServer, hostsFile: hosts, private: private}, nil
}

// Close releases the client.
func (e *Executor) Close() error { return e.cli.Close() }

// Grace is the SIGTERM-to-SIGKILL grace period.
func (e *Executor) Grace() time.Duration { return e.grace }

// engineCallTimeout bounds one engine call of Create.
const engineCallTimeout = 2 * time.Minute

// idleScript keeps the container alive, doing nothing, until it is stopped.
// docker-init (Init) is PID 1: it reaps orphans and forwards SIGTERM here.
const idleScript = `trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done`

// Create implements executors.Executor.
func (e *Executor) Create(ctx context.Context, spec executors.Spec) (executors.Container, error) {
	if spec.RunnerID == "" || spec.JobID == "" {
		return nil, errors.New("creating container: runner id and job id are required")
	}
	if err := e.ensureImage(ctx, spec.Image, spec.Pull, spec.RegistryAuth); err != nil {
		return nil, err
	}

	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	labels[executors.LabelRunner] = spec.RunnerID
	labels[executors.LabelJob] = spec.JobID

	if spec.NetNS != "" {
		return nil, fmt.Errorf("creating container for job %s: the Docker engine makes the container's network namespace; it cannot join %s", spec.JobID, spec.NetNS)
	}
	network := container.NetworkMode("none")
	holderPid := 0
	if spec.NetHolder != "" {
		pid, err := e.holderPid(ctx, spec.RunnerID, spec.NetHolder)
		if err != nil {
			return nil, fmt.Errorf("creating container for job %s: %w", spec.JobID, err)
		}
		holderPid, network = pid, container.NetworkMode("container:"+spec.NetHolder)
	}
	c, err := e.create(ctx, spec, labels, "airlock-"+spec.RunnerID+"-"+spec.JobID, network, holderPid)
	if err != nil {
		return nil, err // never a typed nil
	}
	return c, nil
}

// create makes and starts a job's container named name with the idle
// entrypoint, in a namespace of its own (network "none") or joining the
// one of the container holderPid runs in (network "container:ID").
func (e *Executor) create(ctx context.Context, spec executors.Spec, labels map[string]string, name string, network container.NetworkMode, holderPid int) (*Container, error) {
	lim := e.limits(spec.Limits)
	if err := lim.CheckShm(); err != nil {
		return nil, fmt.Errorf("creating container for job %s: %w", spec.JobID, err)
	}
	hc := e.hardened(network, lim, spec.Mounts)
	if !executors.MountsHosts(spec.Mounts) {
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: e.hostsFile, Target: "/etc/hosts", ReadOnly: true})
	}
	if holderPid == 0 {
		hc.Sysctls = netSysctls() // a holder's namespace has them already
	}
	if lim.ReadOnly {
		tmpSize, workSize := lim.TmpSize, lim.WorkDirSize
		if tmpSize <= 0 {
			tmpSize = DefaultTmpSize
		}
		if workSize <= 0 {
			workSize = DefaultWorkDirSize
		}
		// mode=1777 like a disk /tmp: any user of the job can write there.
		hc.Tmpfs = map[string]string{"/tmp": fmt.Sprintf("rw,nosuid,nodev,mode=1777,size=%d", tmpSize)}
		if spec.WorkDir != "" {
			hc.Tmpfs[spec.WorkDir] = fmt.Sprintf("rw,nosuid,nodev,exec,mode=1777,size=%d", workSize)
		}
	}
	entrypoint := []string{"/bin/sh", "-c", idleScript}
	if e.stepd != "" {
		entrypoint = []string{stepd.Target}
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: e.stepd, Target: stepd.Target, ReadOnly: true})
		// Step output travels on the server's stdout: the engine must not
		// keep a copy (it would hold unmasked secrets).
		hc.LogConfig = container.LogConfig{Type: "none"}
	}
	cfg := &container.Config{
		Image:      spec.Image,
		Entrypoint: entrypoint,
		Cmd:        nil,
		WorkingDir: spec.WorkDir,
		User:       spec.User,
		Labels:     labels,
		// Env stays empty on purpose: variables are given per exec.
		//
		// No network of the engine's: runc gives the container a new,
		// empty network namespace (lo up) that Airlock plumbs. With the
		// engine's "none" network instead, every start ran two re-execs
		// of dockerd (the libnetwork-setkey prestart hook and set-ipv6)
		// and made and bind-mounted a namespace libnetwork then keeps:
		// create and start took 268 ms against 146 ms here. The engine
		// then writes no /etc/hosts: the executor mounts Docker's lines.
		//
		// With a network holder, runc is given the holder's namespace
		// (no engine network either: the engine only looks its pid up).
		NetworkDisabled: holderPid == 0,
		AttachStdin:     e.stepd != "",
		AttachStdout:    e.stepd != "",
		AttachStderr:    e.stepd != "",
		OpenStdin:       e.stepd != "",
	}
	// The engine finishes a create or start it has received even when the
	// client goes away, so these calls are not cut short by ctx (that
	// would leave a container nobody knows of): each is bounded, and ctx
	// is checked between them.
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), engineCallTimeout)
	defer cancel()
	t0 := time.Now()
	resp, err := e.cli.ContainerCreate(octx, cfg, hc, nil, nil, name)
	if err != nil {
		// A timed-out request may still have created it.
		return nil, errors.Join(fmt.Errorf("creating container for job %s: %w", spec.JobID, err), e.Remove(context.WithoutCancel(ctx), name))
	}
	c := &Container{e: e, id: resp.ID, job: spec.JobID, user: spec.User, idleFD: -1, netOwner: resp.ID}
	if network.IsContainer() {
		c.netOwner = network.ConnectedContainer()
	}
	started := false
	fail := func(what string, err error) (*Container, error) {
		if c.step != nil && started && ctx.Err() == nil {
			// A container whose step server could not run stops at once:
			// say so, not only what failed next.
			// How it ended, unless err says so already (Ready adds it
			// when it saw it), and the hint either way.
			if serr := c.step.EndErr(time.Second); serr != nil {
				if !strings.Contains(err.Error(), serr.Error()) {
					err = fmt.Errorf("%w; it ended: %v", err, serr)
				}
				err = fmt.Errorf("%w (if the engine cannot run the step server %s here, set [docker] step_server = \"off\")", err, e.stepd)
			}
		}
		return nil, errors.Join(fmt.Errorf("%s container for job %s: %w", what, spec.JobID, err), c.Destroy(context.WithoutCancel(ctx)))
	}
	if ctx.Err() != nil {
		return fail("creating", context.Cause(ctx))
	}
	if e.stepd != "" {
		// Attached before the start: the server's hello is not missed.
		hj, err := e.cli.ContainerAttach(octx, resp.ID, container.AttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
		if err != nil {
			return fail("attaching to", err)
		}
		c.step = attachStepServer(hj, spec.JobID)
	}
	t1 := time.Now()
	if err := e.cli.ContainerStart(octx, resp.ID, container.StartOptions{}); err != nil {
		return fail("starting", err)
	}
	started = true
	t2 := time.Now()
	if ctx.Err() != nil {
		return fail("starting", context.Cause(ctx))
	}
	info, err := e.cli.ContainerInspect(octx, resp.ID)
	if err == nil && (info.State == nil || info.State.Pid == 0) {
		err = errors.New("container is not running")
	}
	if err != nil {
		return fail("inspecting", err)
	}
	c.pid, c.image = info.State.Pid, info.Image
	c.pidns, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", c.pid))
	if err != nil {
		return fail("reading the pid namespace of", err)
	}
	// The namespace is runc's, not the engine's (no network): make sure
	// no engine hands the job the host's.
	if err := ownNetNS(c.pid); err != nil {
		return fail("isolating", err)
	}
	if holderPid != 0 {
		if err := sameNetNS(c.pid, holderPid); err != nil {
			return fail("isolating", err)
		}
	}
	if c.idle, err = findIdle(c.pid, c.pidns, 10*time.Second); err != nil {
		return fail("starting", err)
	}
	c.idleFD = openIdle(c.idle, c.pid, c.pidns)
	if c.step != nil {
		if err := c.step.Ready(10 * time.Second); err != nil {
			return fail("starting the step server of", err)
		}
	}
	e.log.Debug("container created", "job", spec.JobID, "container", shortID(resp.ID), "pid", c.pid,
		"create", t1.Sub(t0), "start", t2.Sub(t1), "ready", time.Since(t2))
	return c, nil
}

// Leftovers lists the containers labelled with runnerID (executors.Reaper).
func (e *Executor) Leftovers(ctx context.Context, runnerID string) ([]executors.Leftover, error) {
	list, err := e.cli.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", executors.LabelRunner+"="+runnerID)),
	})
	if err != nil {
		return nil, fmt.Errorf("listing containers of runner %s: %w", runnerID, err)
	}
	out := make([]executors.Leftover, 0, len(list))
	for _, c := range list {
		out = append(out, executors.Leftover{ID: c.ID, JobID: c.Labels[executors.LabelJob], Labels: c.Labels})
	}
	return out, nil
}

// RemoveLeftover force-removes a container Leftovers listed
// (executors.Reaper).
func (e *Executor) RemoveLeftover(ctx context.Context, l executors.Leftover) error {
	return e.Remove(ctx, l.ID)
}

// Remove force-removes a container by id; a missing container is not an
// error.
func (e *Executor) Remove(ctx context.Context, id string) error {
	err := e.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) && !isRemovalInProgress(err) {
		return fmt.Errorf("removing container %s: %w", shortID(id), err)
	}
	return nil
}

func isRemovalInProgress(err error) bool {
	return err != nil && strings.Contains(err.Error(), "is already in progress")
}

// Container is a job container.
type Container struct {
	e    *Executor
	id   string
	job  string
	pid  int // host pid of the container's init
	idle int // host pid of the idle entrypoint
	// idleFD is a pidfd of the idle entrypoint (-1 without one): it is
	// signalled through it, so a pid the host reused after the idle
	// entrypoint died is never signalled instead.
	idleFD int
	pidns  string // its pid namespace, to find the job's processes
	// netOwner is the container whose network namespace it has: its
	// own, or the network holder's it joined.
	netOwner string
	image    string // the ID of the image it was made from
	user     string // Spec.User: the step server runs as it
	step     *stepd.Client

	mu      sync.Mutex
	removed bool
	gone    atomic.Bool // removed, for Alive
	fdMu    sync.Mutex  // guards idleFD's close against Alive
}

var (
	_ executors.Container      = (*Container)(nil)
	_ executors.ImageReporter  = (*Container)(nil)
	_ executors.ImageCommander = (*Container)(nil)
	_ executors.Liveness       = (*Container)(nil)
)

// Alive implements executors.Liveness: the idle entrypoint (the step
// server) still runs, by its pidfd (true without one: cannot tell).
// It does not wait for a Destroy in progress.
func (c *Container) Alive() bool {
	if c.gone.Load() {
		return false
	}
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	return executors.PidfdAlive(c.idleFD)
}

// ID implements executors.Container.
func (c *Container) ID() string { return c.id }

// ImageID implements executors.ImageReporter.
func (c *Container) ImageID() string { return c.image }

// ImageCommand implements executors.ImageCommander: the configuration of
// the image (by ID) the container was made from.
func (c *Container) ImageCommand(ctx context.Context) (executors.ImageCommand, error) {
	img, err := c.e.cli.ImageInspect(ctx, c.image)
	if err != nil {
		return executors.ImageCommand{}, fmt.Errorf("inspecting the image of job %s: %w", c.job, err)
	}
	if img.Config == nil {
		return executors.ImageCommand{}, nil
	}
	return executors.ImageCommand{Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd}, nil
}

// NetNS implements executors.Container.
func (c *Container) NetNS() string { return fmt.Sprintf("/proc/%d/ns/net", c.pid) }

// Exec implements executors.Container. A command as the container's user
// runs through the step server when there is one; another user's needs
// the engine (the server has no capability to switch users).
func (c *Container) Exec(ctx context.Context, x executors.Exec) (int, error) {
	if !c.Alive() {
		// The engine would still exec in a container that is stopping.
		return -1, fmt.Errorf("exec in job %s: %w (its idle entrypoint ended)", c.job, executors.ErrContainerStopped)
	}
	var code int
	var err error
	if c.step != nil && (x.User == "" || x.User == c.user) {
		code, err = c.step.Exec(ctx, x, c.e.grace, c.stopProcesses)
	} else {
		code, err = c.engineExec(ctx, x)
	}
	return code, executors.ContainerStopped(ctx, err, &c.fdMu, &c.idleFD)
}

// engineExec runs x as an engine exec (create, attach, inspect).
func (c *Container) engineExec(ctx context.Context, x executors.Exec) (int, error) {
	cli := c.e.cli
	created, err := cli.ContainerExecCreate(ctx, c.id, container.ExecOptions{
		User:         x.User,
		AttachStdin:  x.Stdin != nil,
		AttachStdout: true,
		AttachStderr: true,
		Env:          x.Env,
		WorkingDir:   x.WorkDir,
		Cmd:          x.Cmd,
	})
	if err != nil {
		return -1, fmt.Errorf("creating exec in job %s: %w", c.job, err)
	}
	hj, err := cli.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return -1, fmt.Errorf("starting exec in job %s: %w", c.job, err)
	}
	defer hj.Close()

	stdout, stderr := x.Stdout, x.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	if x.Stdin != nil {
		go func() {
			_, _ = io.Copy(hj.Conn, x.Stdin)
			_ = hj.CloseWrite()
		}()
	}
	done := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(stdout, stderr, hj.Reader)
		done <- err
	}()

	select {
	case err := <-done:
		if err != nil {
			return -1, fmt.Errorf("reading output of job %s: %w", c.job, err)
		}
	case <-ctx.Done():
		grace := x.Grace
		if grace == 0 {
			grace = c.e.grace
		}
		killErr := c.stopProcesses(grace)
		hj.Close()
		<-done
		return -1, errors.Join(context.Cause(ctx), killErr)
	}
	// The stream ends when the process exits; the engine may need a moment
	// to record the exit code.
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for {
		ins, err := cli.ContainerExecInspect(ictx, created.ID)
		if err != nil {
			return -1, fmt.Errorf("inspecting exec in job %s: %w", c.job, err)
		}
		if !ins.Running {
			return ins.ExitCode, nil
		}
		select {
		case <-ictx.Done():
			return -1, fmt.Errorf("waiting for exit code in job %s: %w", c.job, ictx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// jobProcs lists the job's processes in the container.
func (c *Container) jobProcs() ([]int, error) {
	return jobProcesses(c.pid, c.idle, c.pidns, c.step == nil)
}

// stopProcesses sends SIGTERM to every process of the job (all processes
// in the container's pid namespace except its init and the idle
// entrypoint), then SIGKILL to those left after grace. When the processes
// cannot be listed, it still waits the whole grace period (they may be
// cleaning up) and returns the listing error.
func (c *Container) stopProcesses(grace time.Duration) error {
	err := signalJob(c.pid, c.idle, c.pidns, c.step == nil, termSignal)
	gone := func() bool {
		left, lerr := c.jobProcs()
		return lerr == nil && len(left) == 0
	}
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if gone() {
			return err
		}
	}
	err = errors.Join(err, signalJob(c.pid, c.idle, c.pidns, c.step == nil, killSignal))
	// SIGKILL is not instant: wait (bounded) for the processes to go.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && !gone(); time.Sleep(10 * time.Millisecond) {
	}
	return err
}

// Destroy implements executors.Container: SIGTERM to the job's processes,
// grace, then the container is force-removed (SIGKILL).
func (c *Container) Destroy(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	var errs []error
	t0 := time.Now()
	if c.pid != 0 {
		// A listing error is no reason to skip the grace period.
		if left, err := c.jobProcs(); err != nil || len(left) > 0 {
			if err := c.stopProcesses(c.e.grace); err != nil {
				errs = append(errs, fmt.Errorf("stopping the processes of job %s: %w", c.job, err))
			}
		}
		c.stopIdle(ctx)
	}
	t1 := time.Now()
	if err := c.e.Remove(ctx, c.id); err != nil {
		errs = append(errs, err)
	} else {
		c.removed = true
		c.gone.Store(true)
		if c.step != nil {
			_ = c.step.Close()
		}
		c.fdMu.Lock()
		if c.idleFD >= 0 {
			_ = unix.Close(c.idleFD)
			c.idleFD = -1
		}
		c.fdMu.Unlock()
		c.e.log.Debug("container removed", "job", c.job, "container", shortID(c.id), "stop", t1.Sub(t0), "remove", time.Since(t1))
	}
	return errors.Join(errs...)
}

// stopIdle ends the idle entrypoint (its trap exits on SIGTERM) and waits
// briefly for the container to stop by itself: the engine removes a
// stopped container much faster than it kills and removes a running one.
// Remove force-kills whatever is left.
func (c *Container) stopIdle(ctx context.Context) {
	if c.idleFD < 0 || unix.PidfdSendSignal(c.idleFD, unix.SIGTERM, nil, 0) != nil {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	waitC, errC := c.e.cli.ContainerWait(wctx, c.id, container.WaitConditionNotRunning)
	select {
	case <-waitC:
	case <-errC:
	case <-wctx.Done():
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Upload implements executors.Uploader.
func (c *Container) Upload(ctx context.Context, dir string, tarStream io.Reader) error {
	if err := c.e.cli.CopyToContainer(ctx, c.id, dir, tarStream, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("copying into %s of job %s: %w", dir, c.job, err)
	}
	return nil
}

// limits fills the zero fields of l with the executor's defaults: a
// container never runs unlimited.
func (e *Executor) limits(l executors.Limits) executors.Limits {
	if l.Pids == 0 {
		l.Pids = e.cfg.PidsLimit
		if l.Pids == 0 {
			l.Pids = DefaultPidsLimit
		}
	}
	if l.Memory == 0 {
		l.Memory = e.mem
	}
	if l.CPUs == 0 {
		l.CPUs = e.cfg.CPUs
		if l.CPUs == 0 {
			l.CPUs = DefaultCPUs
		}
	}
	if l.ShmSize == 0 {
		l.ShmSize, _ = e.cfg.ShmBytes()
	}
	return l
}

// netSysctls are set in every network namespace the engine makes for a
// job (a job container's, a holder's): no IPv6, and unprivileged ping.
func netSysctls() map[string]string {
	return map[string]string{
		"net.ipv6.conf.all.disable_ipv6":     "1",
		"net.ipv6.conf.default.disable_ipv6": "1",
		"net.ipv4.ping_group_range":          "1 0",
	}
}

// hardened is the host configuration every container Airlock makes gets
// (job and service alike): no capabilities, no new privileges, no restart,
// an init, the limits, the read-only root when asked, and the mounts,
// read-only.
func (e *Executor) hardened(network container.NetworkMode, lim executors.Limits, mounts []executors.Mount) *container.HostConfig {
	init := true
	hc := &container.HostConfig{
		NetworkMode:    network,
		CapDrop:        []string{"ALL"},
		SecurityOpt:    []string{"no-new-privileges:true"},
		RestartPolicy:  container.RestartPolicy{Name: container.RestartPolicyDisabled},
		Init:           &init,
		ReadonlyRootfs: lim.ReadOnly,
		Resources: container.Resources{
			PidsLimit:  &lim.Pids,
			Memory:     lim.Memory,
			MemorySwap: lim.Memory,
			NanoCPUs:   int64(lim.CPUs * 1e9),
		},
		ShmSize: lim.ShmSize,
	}
	for _, m := range mounts {
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: true})
	}
	return hc
}
