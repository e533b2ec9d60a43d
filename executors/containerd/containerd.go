// Package containerd runs jobs as hardened containerd tasks.
//
// Unlike Docker, containerd can start a task inside a network namespace
// that already exists: the runner creates and firewalls the job's
// namespace, then Create starts the task in it (Spec.NetNS), so no process
// of the job ever exists outside its policy. The task's only process is an
// idle entrypoint; every step is an exec whose environment is given at
// exec time, so nothing of the job's variables or credentials is in the
// container's spec (`ctr containers info`).
//
// Everything lives in a containerd namespace of Airlock's own ("airlock"
// by default). Images come from the namespace's image store, else from
// Docker's store (imported through the Docker API, no registry involved),
// else from a registry as the pull policy allows.
package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	dockerclient "github.com/docker/docker/client"
	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/executors/stepd"
)

// Config is the [containerd] section.
type Config struct {
	// Address is containerd's socket; empty takes DefaultAddress if it
	// exists, else DockerAddress (the daemon under Docker).
	Address string `toml:"address"`
	// Namespace is the containerd namespace of every image, container and
	// task Airlock makes (default DefaultNamespace).
	Namespace string `toml:"namespace"`
	// Snapshotter unpacks images (default DefaultSnapshotter).
	Snapshotter string `toml:"snapshotter"`
	// Runtime runs tasks (default DefaultRuntime).
	Runtime string `toml:"runtime"`
	// Image is the default image for jobs that name none.
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
	// DockerHost is the Docker engine whose images are imported when an
	// image is not in containerd ("" = DOCKER_HOST or the default socket;
	// "none" turns importing off).
	DockerHost string `toml:"docker_host"`
	// Registries hold credentials for pulls.
	Registries []Registry `toml:"registry"`
	// Default limits for job containers.
	PidsLimit int64   `toml:"pids_limit"`
	Memory    string  `toml:"memory"`
	CPUs      float64 `toml:"cpus"`
	// Limits of service containers (service_memory etc.; zero: the above).
	docker.ServiceLimits
	// ShmSize is the size of job containers' /dev/shm (default 64m), at
	// most Memory.
	ShmSize string `toml:"shm_size"`
	// Grace is how long processes get between SIGTERM and SIGKILL.
	Grace time.Duration `toml:"stop_grace"`
	// ReadOnly makes every job's root file system read-only, with a
	// writable tmpfs on the work dir (4 GiB) and /tmp (1 GiB).
	ReadOnly bool `toml:"read_only"`
	// StepServer is the host path of the static airlock-stepd, the task's
	// init that starts each step itself and reports its exit status
	// (containerd 1.6 loses the status of an exec that ends at once, now
	// and then, as 0). Empty takes airlock-stepd next to the airlock
	// binary; "off" runs every step as a task exec.
	StepServer string `toml:"step_server"`
	// RuntimeDir holds the executor's host files (the jobs' read-only
	// /etc/hosts); default /run/airlock.
	RuntimeDir string `toml:"-"`
	// StateDir holds what the executor keeps across reboots (the
	// repositories pulled with a job's credentials); default RuntimeDir.
	StateDir string `toml:"-"`
	// CgroupRoot is where the cgroup hierarchies are mounted (default
	// /sys/fs/cgroup), for the removal of the job's cgroups.
	CgroupRoot string `toml:"-"`
}

// Registry is a [[containerd.registry]] entry: credentials for one
// registry host. The password is read from a file (0600, owned by root)
// when a pull needs it, so it is in neither the configuration nor argv.
type Registry struct {
	Host         string `toml:"host"`
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
}

// Defaults of Config.
const (
	DefaultAddress     = "/run/containerd/containerd.sock"
	DockerAddress      = "/var/run/docker/containerd/containerd.sock"
	DefaultNamespace   = "airlock"
	DefaultSnapshotter = "overlayfs"
	DefaultRuntime     = "io.containerd.runc.v2"
	DefaultCgroupRoot  = "/sys/fs/cgroup"
	// NoDocker as DockerHost turns importing from Docker off.
	NoDocker = "none"
)

// identifier is containerd's rule for namespace and container names.
var identifier = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// ResolvedAddress is the socket New connects to.
func (c Config) ResolvedAddress() string {
	if c.Address != "" {
		return c.Address
	}
	if _, err := os.Stat(DefaultAddress); err == nil {
		return DefaultAddress
	}
	return DockerAddress
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Snapshotter == "" {
		c.Snapshotter = DefaultSnapshotter
	}
	if c.Runtime == "" {
		c.Runtime = DefaultRuntime
	}
	if c.Grace == 0 {
		c.Grace = docker.DefaultGrace
	}
	if c.CgroupRoot == "" {
		c.CgroupRoot = DefaultCgroupRoot
	}
	if c.RuntimeDir == "" {
		c.RuntimeDir = "/run/airlock"
	}
	if c.PidsLimit == 0 {
		c.PidsLimit = docker.DefaultPidsLimit
	}
	if c.CPUs == 0 {
		c.CPUs = docker.DefaultCPUs
	}
	return c
}

// Validate returns every problem with the configuration, naming its key
// under prefix (e.g. "containerd").
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
	if c.Namespace != "" && (!identifier.MatchString(c.Namespace) || len(c.Namespace) > 76) {
		errs = append(errs, fmt.Errorf("%s.namespace %q: letters, digits and single . _ - between them, at most 76", prefix, c.Namespace))
	}
	if c.PidsLimit < 0 {
		errs = append(errs, fmt.Errorf("%s.pids_limit: must not be negative", prefix))
	}
	if c.Memory != "" {
		if _, err := docker.ParseBytes(c.Memory); err != nil {
			errs = append(errs, fmt.Errorf("%s.memory: %w", prefix, err))
		}
	}
	if c.CPUs < 0 {
		errs = append(errs, fmt.Errorf("%s.cpus: must not be negative", prefix))
	}
	if err := docker.ValidShm(prefix, c.ShmSize, c.Memory); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.ServiceLimits.Validate(prefix, c.ShmSize)...)
	if c.Grace < 0 {
		errs = append(errs, fmt.Errorf("%s.stop_grace: must not be negative", prefix))
	}
	for i, r := range c.Registries {
		key := fmt.Sprintf("%s.registry[%d]", prefix, i)
		if r.Host == "" {
			errs = append(errs, fmt.Errorf("%s.host: required", key))
		}
		if r.Username == "" || r.PasswordFile == "" {
			errs = append(errs, fmt.Errorf("%s: username and password_file are required", key))
		}
	}
	return errs
}

// Executor creates job containers as containerd tasks.
type Executor struct {
	cli  *containerd.Client
	cfg  Config
	log  hclog.Logger
	pull executors.PullPolicy
	mem  int64
	shm  int64 // /dev/shm's default size

	hostsFile string // read-only /etc/hosts of every job
	stepd     string // host path of the step server; "" for task execs

	images  imageCache
	private *executors.PrivateImages
	mu      sync.Mutex
	imps    map[string]*importCall // imports in flight, by image name

	dockerOnce sync.Once
	docker     *dockerclient.Client // of the engine images are imported from
	dockerErr  error
}

var (
	_ executors.Executor        = (*Executor)(nil)
	_ executors.NamespaceJoiner = (*Executor)(nil)
	_ executors.Reaper          = (*Executor)(nil)
	_ executors.ImageIdentifier = (*Executor)(nil)
	_ executors.ImagePuller     = (*Executor)(nil)
)

// New connects to containerd and checks that it answers.
func New(ctx context.Context, cfg Config, log hclog.Logger) (*Executor, error) {
	if errs := cfg.Validate("containerd"); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	cfg = cfg.withDefaults()
	addr := cfg.ResolvedAddress()
	cli, err := containerd.New(addr, containerd.WithDefaultNamespace(cfg.Namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd at %s: %w", addr, err)
	}
	if _, err := cli.Version(ctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("connecting to containerd at %s: %w", addr, err)
	}
	pull, _ := executors.ParsePullPolicy(cfg.Pull)
	mem := int64(docker.DefaultMemory)
	if cfg.Memory != "" {
		mem, _ = docker.ParseBytes(cfg.Memory)
	}
	shm := int64(executors.DefaultShmSize)
	if cfg.ShmSize != "" {
		shm, _ = docker.ParseBytes(cfg.ShmSize)
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named("containerd")
	hosts := filepath.Join(cfg.RuntimeDir, "containerd", "hosts")
	if err := executors.WriteHostsFile(hosts, hostsContent); err != nil {
		cli.Close()
		return nil, err
	}
	stepServer, why, err := stepd.Resolve("containerd.step_server", cfg.StepServer)
	if err != nil {
		cli.Close()
		return nil, err
	}
	if stepServer == "" {
		log.Info("steps run as task execs (slower, and containerd may report an instant failure as 0): no step server", "reason", why)
	}
	keep := cfg.StateDir
	if keep == "" {
		keep = cfg.RuntimeDir
	}
	private, err := executors.LoadPrivateImages(filepath.Join(keep, "containerd", "private-images"))
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &Executor{cli: cli, cfg: cfg, log: log, pull: pull, mem: mem, shm: shm, hostsFile: hosts, stepd: stepServer,
		private: private, imps: map[string]*importCall{}}, nil
}

// hostsContent is every job's /etc/hosts (Docker's lines, and the
// task's host name).
const hostsContent = executors.LocalhostLines + "127.0.1.1\tairlock\n"

// Close releases the client.
func (e *Executor) Close() error {
	if e.docker != nil {
		e.docker.Close()
	}
	return e.cli.Close()
}

// Grace is the SIGTERM-to-SIGKILL grace period.
func (e *Executor) Grace() time.Duration { return e.cfg.Grace }

// Namespace is the containerd namespace the executor works in.
func (e *Executor) Namespace() string { return e.cfg.Namespace }

// Client is the containerd client (for checks and tests).
func (e *Executor) Client() *containerd.Client { return e.cli }

// JoinsNetNS implements executors.NamespaceJoiner: the task starts in
// Spec.NetNS.
func (e *Executor) JoinsNetNS() bool { return true }

func (e *Executor) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, e.cfg.Namespace)
}

// ContainerID is the containerd container id of a job:
// "airlock-RUNNER-JOB", each part as it is when containerd's id alphabet
// allows it and it is short, a hash of it otherwise (ids are at most 76
// characters). Every id of a runner starts with IDPrefix(runnerID).
func ContainerID(runnerID, jobID string) string {
	return IDPrefix(runnerID) + idPart(jobID, 40)
}

// IDPrefix is the start of every container id of runnerID.
func IDPrefix(runnerID string) string { return "airlock-" + idPart(runnerID, 24) + "-" }

func idPart(s string, max int) string {
	if identifier.MatchString(s) && len(s) <= max {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "h" + hex.EncodeToString(sum[:])[:20]
}
