package job

import (
	"context"
	"io"
)

// StepDriver gives a coordinator's step semantics (GitHub's if:, shells,
// file and workflow commands, actions, post steps) to the runner's step
// loop without the runner knowing them. The runner keeps what every job
// shares: the container, step headers, hooks, audit records, the job's
// cancel and timeout, and the job's end state.
//
// Call order, all from one goroutine: Begin once (the container exists,
// no step ran yet); then, for i = 0 while i < Len(): Decide(i), and Run(i)
// if Decide said so; then End once. A failed Begin fails the job as a
// runner failure: no step runs and End is not called. Len may grow while
// the job runs (an action's post step is added when its main step ran).
// After an abort the runner calls neither Decide nor Run: the remaining
// steps are reported skipped.
type StepDriver interface {
	// Begin prepares the job's steps (e.g. fetches actions on the host).
	Begin(ctx context.Context, h StepHost) error
	// Len is the number of steps known now.
	Len() int
	// Name is step i's name for headers, hooks and the audit trail.
	Name(i int) string
	// Decide says whether step i runs given how the job stands. A step
	// that runs while st.Canceled is set is given a context that the
	// job's cancellation does not end (the runner bounds it).
	Decide(ctx context.Context, i int, st RunStatus) (bool, error)
	// Run runs step i through h and reports it; fails says whether the
	// result fails the job (false for a step that may fail).
	Run(ctx context.Context, i int, h StepHost) (r StepResult, fails bool)
	// End runs after the last step (e.g. evaluates job outputs).
	End(ctx context.Context, st RunStatus, h StepHost) error
}

// RunStatus is how a job stands before a step.
type RunStatus struct {
	Failed   bool // a step failed the job
	Canceled bool // the job was cancelled or timed out
}

// StepHost is what the runner lends a StepDriver to run a step.
type StepHost interface {
	// Exec runs one command in the job's container with the job's base
	// environment followed by x.Env. Its exit code is a result; err is a
	// runner failure, a cancel or a timeout (ctx's cause).
	Exec(ctx context.Context, x StepExec) (exitCode int, err error)
	// Mask makes the job log mask values from now on. Values shorter than
	// mask.MinLength are refused (they would match ordinary output); it
	// returns how many, for the driver to say so in the log.
	Mask(values ...string) (refused int)
	// Log is the job log (masked).
	Log() io.Writer
	// Env is the job's base environment (KEY=VALUE).
	Env() []string
	// WorkDir is the job's working directory in the container.
	WorkDir() string
	// RuntimeDir is the job's runtime directory on the host, which the
	// driver may fill, and where the container sees it (read-only).
	RuntimeDir() (host, container string)
}

// StepExec is one command a driver runs in the job's container.
type StepExec struct {
	Cmd     []string
	Env     []string  // appended to the base environment
	WorkDir string    // "" = the job's working directory
	Stdin   io.Reader // nil: none
	Stdout  io.Writer // nil: the job log
	Stderr  io.Writer // nil: Stdout
}

// ContainerStepHost is an optional StepHost capability: a command run in
// a container of another image beside the job's (a GitHub Docker
// container action), in the job's network namespace (its firewall and
// gateway apply), with the job container's hardening, mounts (the
// runtime directory, resolv.conf, hosts) and base environment. Dirs of
// the job container are copied in before the command runs and copied
// back after it ended, a failure included, replacing what was there; the
// container is removed afterwards.
type ContainerStepHost interface {
	ExecContainer(ctx context.Context, x ContainerExec) (exitCode int, err error)
}

// ContainerExec is one command a driver runs in a container of its own.
type ContainerExec struct {
	Name  string // tells the container from the job's others ("action-3")
	Image string
	// Entrypoint and Args replace the image's ENTRYPOINT and CMD, as
	// docker run --entrypoint and its arguments do (nil: the image's).
	Entrypoint, Args []string
	Env              []string // over the job's base environment
	// Root is a writable directory of the container that Dirs and the
	// In copies land under; WorkDir is where the command starts.
	Root, WorkDir string
	Dirs          []string // empty directories made under Root first
	// Links are symbolic links made under Root after Dirs and the In
	// copies: one directory seen at two paths, as a bind mount shows it.
	Links   []Symlink
	In, Out []DirCopy
	Stdout  io.Writer // stdout and stderr; nil: the job log
}

// DirCopy copies directory From's contents to directory To (In: from
// the job's container to the step's, To below Root; Out: back).
type DirCopy struct{ From, To string }

// Symlink is a link at Path (below the container step's Root) to Target.
type Symlink struct{ Path, Target string }

// Driven is an optional capability of a Lease whose job needs its
// coordinator's step semantics: the agent passes the driver to the runner
// (runner.RunOptions.Driver).
type Driven interface {
	StepDriver() StepDriver
}
