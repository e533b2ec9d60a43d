// Package executors defines how Airlock runs a job's steps in an isolated
// container. Executors know nothing of job sources (GitLab, GitHub) or of
// secrets: they receive a container spec and commands with their
// environment.
package executors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
)

// PullPolicy says when an image is pulled.
type PullPolicy string

// Pull policies, with gitlab-runner's meaning.
const (
	PullIfNotPresent PullPolicy = "if-not-present"
	PullNever        PullPolicy = "never"
	PullAlways       PullPolicy = "always"
)

// ParsePullPolicy parses a pull policy; "" means if-not-present.
func ParsePullPolicy(s string) (PullPolicy, error) {
	switch p := PullPolicy(s); p {
	case "":
		return PullIfNotPresent, nil
	case PullIfNotPresent, PullNever, PullAlways:
		return p, nil
	}
	return "", fmt.Errorf("pull policy %q: must be if-not-present, never or always", s)
}

// ParsePullPolicies parses a list of pull policies (an admin's
// allowed_pull_policies, a job's pull_policy), naming the bad one by its
// index under key.
func ParsePullPolicies(key string, list []string) ([]PullPolicy, error) {
	var out []PullPolicy
	var errs []error
	for i, s := range list {
		p, err := ParsePullPolicy(s)
		if s == "" {
			err = errors.New("must be if-not-present, never or always")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", key, i, err))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// Limits bound a job container's resources. Zero means the executor's
// default, never unlimited.
type Limits struct {
	Pids     int64   // maximum number of processes
	Memory   int64   // bytes; swap is not allowed beyond it
	CPUs     float64 // number of CPUs
	ReadOnly bool    // read-only root filesystem (a writable tmpfs on the work dir and /tmp)
	// WorkDirSize and TmpSize bound the writable tmpfs on the work dir
	// and /tmp when ReadOnly is set (bytes; 0: the executor's default).
	WorkDirSize, TmpSize int64
	// ShmSize is the size of /dev/shm in bytes (0: the executor's
	// shm_size, else 64 MiB). Its pages count against Memory, which it
	// may not exceed.
	ShmSize int64
}

// Override is l with the process, memory and CPU limits o sets replacing
// its own (a service's limits over the job's).
func (l Limits) Override(o Limits) Limits {
	if o.Pids != 0 {
		l.Pids = o.Pids
	}
	if o.Memory != 0 {
		l.Memory = o.Memory
	}
	if o.CPUs != 0 {
		l.CPUs = o.CPUs
	}
	return l
}

// DefaultShmSize is /dev/shm's size when nothing sets it, as Docker's.
const DefaultShmSize = 64 << 20

// CheckShm refuses a /dev/shm larger than the memory limit l has (both
// filled with the executor's defaults).
func (l Limits) CheckShm() error {
	if l.ShmSize > l.Memory {
		return fmt.Errorf("a /dev/shm of %d MiB is more than the container's memory limit of %d MiB", l.ShmSize>>20, l.Memory>>20)
	}
	return nil
}

// Mount is a host path mounted into the job container, always read-only.
type Mount struct {
	Source string // host path
	Target string // path in the container
}

// Spec describes a job's container.
type Spec struct {
	RunnerID string
	JobID    string
	Image    string
	Pull     PullPolicy
	// RegistryAuth are the job's own registry credentials, used when
	// Image is pulled.
	RegistryAuth []RegistryAuth
	Labels       map[string]string // extra labels; runner and job labels are always set
	Limits       Limits
	Mounts       []Mount
	WorkDir      string // created as a writable tmpfs if Limits.ReadOnly
	User         string // "" = the image's user
	// NetNS is the path of a network namespace the caller created and
	// firewalled (/var/run/netns/NAME): an executor that implements
	// NamespaceJoiner starts every process of the job in it. Executors
	// that create the namespace themselves (Docker) require it empty.
	NetNS string
	// NetHolder is the ID of a holder (NetworkHolder.HoldNetwork) whose
	// namespace the caller plumbed and firewalled: the job's container
	// joins that namespace instead of getting a new one. Only for an
	// executor that implements NetworkHolder.
	NetHolder string
}

// Exec is one command run in a job's container.
type Exec struct {
	Cmd     []string
	Env     []string // KEY=VALUE, given at exec time only
	WorkDir string
	User    string
	Stdin   io.Reader // nil: no stdin
	Stdout  io.Writer
	Stderr  io.Writer
	// Grace is how long the command has between SIGTERM and SIGKILL when
	// ctx ends before it does.
	Grace time.Duration
}

// Executor creates job containers.
//
// Create pulls the image as the spec's policy says and starts a container
// whose only process is an idle entrypoint: nothing of the job runs before
// the caller has set up the network and calls Exec. On error, Create has
// removed whatever it made.
type Executor interface {
	Create(ctx context.Context, spec Spec) (Container, error)
}

// Container is a job container created by an Executor.
//
// Exec may be called any number of times, one at a time. Destroy stops
// every process (SIGTERM, grace, SIGKILL) and removes the container and
// everything the executor made for it; it must succeed after a failed or
// partial Create, and calling it again is a no-op.
type Container interface {
	ID() string
	// NetNS is the path of the container's network namespace, valid while
	// the container exists, for the sandbox to plumb.
	NetNS() string
	// Exec runs cmd and returns its exit code. A non-zero exit code is not
	// an error. If ctx ends first, the command's processes get SIGTERM,
	// then SIGKILL after the grace period, and Exec returns ctx's error.
	Exec(ctx context.Context, e Exec) (int, error)
	Destroy(ctx context.Context) error
}

// ErrImageNotFound is wrapped by Create's error when the image is missing
// and the pull policy forbids or fails to pull it.
var ErrImageNotFound = errors.New("image not found")

// Label keys put on everything Airlock creates for a job.
const (
	LabelRunner = "io.airlock.runner"
	LabelJob    = "io.airlock.job"
)

// NamespaceJoiner is an optional Executor capability: the executor starts
// the job's processes in the network namespace named by Spec.NetNS, which
// the caller created and firewalled before Create, so that no process of
// the job ever exists outside its policy (containerd). An executor without
// it creates the namespace itself, reports it by Container.NetNS, and runs
// only an idle entrypoint until the caller has plumbed it (Docker).
type NamespaceJoiner interface {
	JoinsNetNS() bool
}

// NetworkHolder is an optional Executor capability of an executor that
// makes each container's network namespace itself (Docker): HoldNetwork
// starts a holder, a container that runs nothing and keeps a new network
// namespace alive, so that the caller can plumb and firewall a job's
// namespace before the job exists; a job container created with
// Spec.NetHolder joins it (as a pod's containers join its pause
// container's). The caller destroys the holder after the job's container.
type NetworkHolder interface {
	// HoldsNetworks is nil when HoldNetwork can work here, else why not.
	HoldsNetworks() error
	// HoldNetwork starts a holder labelled like a job's container
	// (runnerID, id, labels), so recovery finds it as it finds a job's.
	HoldNetwork(ctx context.Context, runnerID, id string, labels map[string]string) (Holder, error)
}

// Liveness is an optional Container and Holder capability: Alive reports,
// without a call to the engine, whether its idle entrypoint (a holder's
// process) still runs. The warm pool never hands a job a sandbox that
// died before a claim (the engine restarted, an admin removed it, the
// kernel killed it). An executor that cannot tell says true.
type Liveness interface {
	Alive() bool
}

// Holder keeps a network namespace alive for a job (NetworkHolder).
type Holder interface {
	ID() string
	// NetNS is the path of its network namespace.
	NetNS() string
	// Destroy removes it; a second call does nothing.
	Destroy(ctx context.Context) error
}

// ImageIdentifier is an optional Executor capability: the ID of the image
// that ref names in the executor's local store now (Docker: the image ID;
// containerd: its target's digest), or an error wrapping ErrImageNotFound.
// The warm pool compares it with ImageReporter's to retire the sandboxes
// of an image updated under the same name.
type ImageIdentifier interface {
	ImageID(ctx context.Context, ref string) (string, error)
}

// ImagePuller is an optional Executor capability: pull ref now, as pull
// policy "always" does for Create (with the job's credentials for its
// registry), and return the pulled image's ID in ImageIdentifier's terms.
// The warm pool pulls so for a job that claims a sandbox under "always".
type ImagePuller interface {
	PullImage(ctx context.Context, ref string, auths []RegistryAuth) (string, error)
}

// ImageReporter is an optional Container capability: the ID of the image
// the container was made from, in ImageIdentifier's terms.
type ImageReporter interface {
	ImageID() string
}

// SiblingCreator is an optional Container capability: another container
// of the same job, from another image, for a step that runs in an image
// of its own (a GitHub Docker container action). Of spec only Image,
// Pull, RegistryAuth, WorkDir, User, Limits and Mounts are read; the rest
// is the job container's. The sibling has the job container's network
// namespace (its firewall and gateway apply), hardening and labels
// (recovery removes it with the job's), and runs only the idle
// entrypoint until Exec. name tells it from the job's other containers.
// The image's own entrypoint and command come back for the caller to run
// (nothing of them runs by itself). The caller destroys the sibling.
type SiblingCreator interface {
	CreateSibling(ctx context.Context, name string, spec Spec) (Container, ImageCommand, error)
}

// ImageCommand is an image's ENTRYPOINT and CMD.
type ImageCommand struct{ Entrypoint, Cmd []string }

// ImageCommander is an optional Container capability: the ENTRYPOINT
// and CMD of the image the container was made from (none of them runs:
// the container's init is the idle entrypoint).
type ImageCommander interface {
	ImageCommand(ctx context.Context) (ImageCommand, error)
}

// LabelSibling marks a job's sibling container (its value: the name).
const LabelSibling = "io.airlock.sibling"

// Leftover is something an executor made for a job that is still there.
type Leftover struct {
	ID     string            // executor-specific id (container id)
	JobID  string            // the LabelJob label
	Labels map[string]string // every label it carries
}

// Reaper is an optional Executor capability used by crash recovery: List
// returns what is labelled with runnerID (and nothing else), Remove takes
// one away with everything the executor made for it (task, snapshot,
// cgroups). Remove of something already gone is not an error.
type Reaper interface {
	Leftovers(ctx context.Context, runnerID string) ([]Leftover, error)
	RemoveLeftover(ctx context.Context, l Leftover) error
}

// Uploader is an optional Container capability: copying a tar stream into
// a directory of the container (the job's sources, for example).
type Uploader interface {
	Upload(ctx context.Context, dir string, tarStream io.Reader) error
}

// Downloader is an optional Container capability: a tar stream of path in
// the container (a file, a directory with everything below it, or a
// symlink itself, never what it points to), read by the engine within the
// container's filesystem. The first component of every entry name is
// path's base name. A missing path gives an error wrapping fs.ErrNotExist.
type Downloader interface {
	Download(ctx context.Context, path string) (io.ReadCloser, error)
}

// ServiceSpec describes a service container started beside a job (a
// database the job's tests talk to).
type ServiceSpec struct {
	// Name identifies the service in names and logs (e.g. "postgres-0").
	Name  string
	Image string
	Pull  PullPolicy
	// Entrypoint and Cmd replace the image's when not nil.
	Entrypoint, Cmd []string
	// Env is the service's public environment (KEY=VALUE); it is in the
	// container's configuration, so it must never hold a secret.
	Env []string
	// SecretEnv are variables that hold secrets (a database password
	// from a masked variable): the service's first process gets them
	// (over Env) when it starts; they are never in the container's
	// configuration. An executor that cannot deliver them so refuses the
	// service.
	SecretEnv []string
	// Health replaces or tunes the image's health check; nil keeps it.
	Health *HealthCheck
	// RegistryAuth are the job's registry credentials for pulling Image.
	RegistryAuth []RegistryAuth
	Labels       map[string]string
	Limits       Limits
	Mounts       []Mount
}

// ServiceArgv is the command line an engine starts a service with: its
// entrypoint, else the image's, then its command, else (no entrypoint
// given) the image's. An entrypoint of [""] clears the image's and keeps
// its command from being used (dockerd's mergeAndVerifyConfig).
func ServiceArgv(spec ServiceSpec, imgEntrypoint, imgCmd []string) []string {
	ep, cmd := spec.Entrypoint, spec.Cmd
	if len(ep) == 0 {
		if len(cmd) == 0 {
			cmd = imgCmd
		}
		if ep == nil {
			ep = imgEntrypoint
		}
	}
	if len(ep) == 1 && ep[0] == "" {
		ep = nil
	}
	return append(append([]string{}, ep...), cmd...)
}

// HealthCheck is a service's health check, run by the engine inside the
// service's container (Docker's HEALTHCHECK). A zero field keeps the
// image's value.
type HealthCheck struct {
	// Test is ["CMD-SHELL", command], ["CMD", args...] or ["NONE"].
	Test                           []string
	Interval, Timeout, StartPeriod time.Duration
	Retries                        int
}

// Health states a HealthReporter reports.
const (
	HealthNone      = ""          // no health check
	HealthStarting  = "starting"  // not yet decided
	HealthHealthy   = "healthy"   // its check passes
	HealthUnhealthy = "unhealthy" // its check failed its retries
	HealthExited    = "exited"    // the service is not running
)

// HealthReporter is an optional Service capability: the state of its
// health check.
type HealthReporter interface {
	Health(ctx context.Context) (string, error)
}

// Service is a running service container.
//
// Logs writes the service's output to w, following it until ctx ends
// when follow is set. Destroy stops and removes it; calling it again is a
// no-op.
type Service interface {
	ID() string
	// Ports are the TCP ports the image exposes, sorted.
	Ports() []int
	Logs(ctx context.Context, w io.Writer, follow bool) error
	Destroy(ctx context.Context) error
}

// ServiceStarter is an optional Container capability: starting a service
// container in the job's own network namespace (so that it shares the
// job's firewall and reaches nothing the job cannot), with the job
// container's hardening and limits and its runner and job labels, so that
// recovery finds it. The job reaches it on 127.0.0.1.
type ServiceStarter interface {
	StartService(ctx context.Context, spec ServiceSpec) (Service, error)
}

// ChildLabels are the labels of a container a job's container begins (a
// service or a sibling): own, then the job container's airlock labels
// (runner, job and the rest of io.airlock.*, so that recovery removes it
// with the job's), then kind=name.
func ChildLabels(own, job map[string]string, kind, name string) map[string]string {
	labels := map[string]string{}
	for k, v := range own {
		labels[k] = v
	}
	for k, v := range job {
		if k == LabelRunner || k == LabelJob || strings.HasPrefix(k, "io.airlock.") {
			labels[k] = v
		}
	}
	labels[kind] = name
	return labels
}

// ValidImagePatterns checks allowed_images-style patterns (doublestar
// globs over image references), naming each bad one by key and index.
func ValidImagePatterns(key string, patterns []string) []error {
	var errs []error
	for i, p := range patterns {
		if strings.TrimSpace(p) == "" || !doublestar.ValidatePattern(p) {
			errs = append(errs, fmt.Errorf("%s[%d] %q: not a valid pattern", key, i, p))
		}
	}
	return errs
}

// ImageAllowed says whether image matches one of patterns (doublestar:
// "*" stays within a path segment, "**" crosses them: "ruby:*",
// "registry.example.com/team/**"); no patterns allow every image.
func ImageAllowed(image string, patterns []string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := doublestar.Match(p, image); ok {
			return true
		}
	}
	return false
}
