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
	"time"
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

// Limits bound a job container's resources. Zero means the executor's
// default, never unlimited.
type Limits struct {
	Pids     int64   // maximum number of processes
	Memory   int64   // bytes; swap is not allowed beyond it
	CPUs     float64 // number of CPUs
	ReadOnly bool    // read-only root filesystem (a writable tmpfs on the work dir and /tmp)
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
	Labels   map[string]string // extra labels; runner and job labels are always set
	Limits   Limits
	Mounts   []Mount
	WorkDir  string // created as a writable tmpfs if Limits.ReadOnly
	User     string // "" = the image's user
	// DNS is the resolver the job uses (the job's gateway). Empty leaves the
	// image's resolv.conf alone.
	DNS string
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

// Uploader is an optional Container capability: copying a tar stream into
// a directory of the container (the job's sources, for example).
type Uploader interface {
	Upload(ctx context.Context, dir string, tarStream io.Reader) error
}
