// Package runner runs one job through its whole lifecycle (Runner.Run):
// decide what it may use, sandbox it, run its steps, and tear everything
// down on every exit path. The agent loop that polls coordinators also
// lives here.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// Config configures a Runner.
type Config struct {
	// RunnerID labels everything the runner creates.
	RunnerID string
	// RuntimeDir holds per-job files (file variables, resolver config,
	// credentials delivered as files) on tmpfs; default /run/airlock.
	RuntimeDir string
	// WorkDir is the job's working directory in the container.
	WorkDir string
	// Grace is how long processes get between SIGTERM and SIGKILL.
	Grace time.Duration
	// CleanupTimeout bounds teardown after the job ends.
	CleanupTimeout time.Duration
	// Pull is the image pull policy.
	Pull executors.PullPolicy
	// Limits for job containers (zero fields: the executor's defaults).
	Limits executors.Limits
	// User runs the steps ("" = the image's user).
	User string
}

// Defaults for Config's zero fields.
const (
	DefaultRuntimeDir     = "/run/airlock"
	DefaultWorkDir        = "/builds"
	DefaultGrace          = 10 * time.Second
	DefaultCleanupTimeout = 2 * time.Minute
	DefaultAfterTimeout   = 5 * time.Minute
)

// containerRunDir is where the job's runtime directory appears in the
// container (read-only).
const containerRunDir = "/run/airlock"

// Runner runs jobs. Its optional parts (Network, Credentials, Audit) are
// set by the caller; a job that needs a part the runner lacks is refused
// before anything of it runs.
type Runner struct {
	cfg  Config
	exec executors.Executor
	log  hclog.Logger

	// Hooks observe the job's lifecycle (audit trail, metrics, the
	// terminal summary). Each hook must return quickly.
	Hooks []Hook
}

// New returns a Runner that creates job containers with exec.
func New(cfg Config, exec executors.Executor, log hclog.Logger) (*Runner, error) {
	if cfg.RunnerID == "" {
		return nil, errors.New("creating runner: runner id is required")
	}
	if cfg.RuntimeDir == "" {
		cfg.RuntimeDir = DefaultRuntimeDir
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = DefaultWorkDir
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.CleanupTimeout == 0 {
		cfg.CleanupTimeout = DefaultCleanupTimeout
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Runner{cfg: cfg, exec: exec, log: log}, nil
}

// Hook observes a job. Calls for one job come from one goroutine, in
// order: JobStarted, then StepStarted/StepFinished pairs, then JobFinished.
type Hook interface {
	JobStarted(j *job.Job)
	StepStarted(j *job.Job, step string)
	StepFinished(j *job.Job, r StepResult)
	JobFinished(j *job.Job, r *Result)
}

// RunOptions control one run.
type RunOptions struct {
	// Out receives the job's output: step headers, commands, their output.
	Out io.Writer
	// Cancel, when closed, cancels the job: the running step is stopped
	// and only steps that run "always" (after_script) still run. GitLab's
	// Job-Status "canceling", a first Ctrl-C.
	Cancel <-chan struct{}
	// Mask lists values the output must never show besides the job's
	// masked variables and credentials (e.g. the coordinator's job token).
	Mask []string
	// Workspace, if set, fills dir (a fresh, empty host directory) with
	// the job's sources before the first step, e.g. a git clone done on
	// the host so that no clone credential enters the job. The runner
	// copies dir into the job's working directory. Output written to out
	// goes to the job's log (masked).
	Workspace func(ctx context.Context, dir string, out io.Writer) error
}

// Run runs j and returns how it went. Cancelling ctx aborts the job: the
// running step is stopped and no further step runs (GitLab's "canceled",
// a second Ctrl-C, the end of a runner's shutdown timeout). Teardown runs
// on every path. Run returns an error only for a failure of teardown;
// everything about the job itself, including a refused declaration or a
// runner failure while running it, is in the Result.
func (r *Runner) Run(ctx context.Context, j *job.Job, o RunOptions) (res *Result, err error) {
	start := time.Now()
	log := r.log.With("job", j.ID)
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	res = &Result{State: Failed, Reason: RunnerSystemFailure}
	for _, h := range r.Hooks {
		h.JobStarted(j)
	}
	defer func() {
		res.Duration = time.Since(start)
		for _, h := range r.Hooks {
			h.JobFinished(j, res)
		}
	}()

	if err := j.Validate(); err != nil {
		res.Reason, res.Err = ConfigurationError, fmt.Errorf("invalid job: %w", err)
		return res, nil
	}
	if err := r.refuseUnsupported(j); err != nil {
		res.Reason, res.Err = Unauthorized, err
		return res, nil
	}

	timeout := j.Timeout
	if timeout <= 0 {
		timeout = time.Hour
	}
	// jobCtx ends on abort, cancel or timeout; its cause says which.
	jobCtx, cancelJob := context.WithCancelCause(ctx)
	defer cancelJob(nil)
	timer := time.AfterFunc(timeout, func() { cancelJob(ErrTimeout) })
	defer timer.Stop()
	if o.Cancel != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-o.Cancel:
				cancelJob(ErrCanceled)
			case <-stop:
			}
		}()
	}

	e := &execution{r: r, j: j, log: log, out: out}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.CleanupTimeout)
		defer cancel()
		if err = e.teardown(cctx); err != nil {
			log.Error("teardown failed", "error", err)
		}
	}()

	fmt.Fprintf(out, "Running job %s on runner %s\n", j.ID, r.cfg.RunnerID)
	fmt.Fprintf(out, "Preparing a hardened container from %s\n", j.Image)
	if err := e.prepare(jobCtx); err != nil {
		res.Err = err
		if errors.Is(err, executors.ErrImageNotFound) {
			res.Reason = ImagePullFailure
		}
		if jobCtx.Err() != nil {
			r.endState(res, ctx, jobCtx)
		}
		return res, nil
	}
	e.runSteps(ctx, jobCtx, res)
	return res, nil
}

// refuseUnsupported refuses declarations this runner cannot honour yet,
// rather than silently ignore them.
func (r *Runner) refuseUnsupported(j *job.Job) error {
	var errs []error
	if len(j.Secrets) > 0 {
		errs = append(errs, fmt.Errorf("the job declares secrets (%s), but this runner has no secrets broker: Airlock does not yet deliver credentials", j.Secrets[0].Name))
	}
	if len(j.Egress) > 0 {
		errs = append(errs, fmt.Errorf("the job declares egress (%s), but this runner has no egress gateway: Airlock does not yet give jobs a network", j.Egress[0]))
	}
	if len(errs) > 0 {
		return &DeniedError{Err: errors.Join(errs...)}
	}
	return nil
}

// endState sets a result's state from why the job's context ended.
func (r *Runner) endState(res *Result, ctx, jobCtx context.Context) {
	cause := context.Cause(jobCtx)
	switch {
	case ctx.Err() != nil || errors.Is(cause, ErrCanceled):
		res.State, res.Reason = Canceled, ""
		if res.Err == nil {
			res.Err = ErrCanceled
		}
	case errors.Is(cause, ErrTimeout):
		res.State, res.Reason = Failed, JobTimeout
		if res.Err == nil || !errors.Is(res.Err, ErrTimeout) {
			res.Err = errors.Join(ErrTimeout, res.Err)
		}
	}
}

// execution is one job's run: what was set up, to be torn down.
type execution struct {
	r   *Runner
	j   *job.Job
	log hclog.Logger
	out io.Writer

	dir string // runtime directory on the host
	ctr executors.Container
	env []string
}

func (e *execution) prepare(ctx context.Context) error {
	e.dir = filepath.Join(e.r.cfg.RuntimeDir, "jobs", e.r.cfg.RunnerID+"-"+e.j.ID)
	if err := os.MkdirAll(filepath.Dir(e.dir), 0o700); err != nil {
		return fmt.Errorf("creating runtime directory: %w", err)
	}
	if err := os.Mkdir(e.dir, 0o755); err != nil {
		return fmt.Errorf("creating runtime directory for job %s: %w", e.j.ID, err)
	}
	env, err := e.variables()
	if err != nil {
		return err
	}
	e.env = env
	ctr, err := e.r.exec.Create(ctx, executors.Spec{
		RunnerID: e.r.cfg.RunnerID,
		JobID:    e.j.ID,
		Image:    e.j.Image,
		Pull:     e.r.cfg.Pull,
		Limits:   e.r.cfg.Limits,
		WorkDir:  e.r.cfg.WorkDir,
		User:     e.r.cfg.User,
		Mounts:   []executors.Mount{{Source: e.dir, Target: containerRunDir}},
	})
	if err != nil {
		return fmt.Errorf("preparing container: %w", err)
	}
	e.ctr = ctr
	return nil
}

// variables returns the steps' environment: predefined variables, then
// the job's (file variables written to the runtime directory).
func (e *execution) variables() ([]string, error) {
	j := e.j
	env := []string{
		"CI=true",
		"AIRLOCK=true",
		"CI_JOB_ID=" + j.ID,
		"CI_PROJECT_DIR=" + e.r.cfg.WorkDir,
	}
	if j.Repo != "" {
		env = append(env, "CI_PROJECT_PATH="+j.Repo)
	}
	if j.Ref != "" {
		env = append(env, "CI_COMMIT_REF_NAME="+j.Ref)
	}
	if j.SHA != "" {
		env = append(env, "CI_COMMIT_SHA="+j.SHA)
	}
	if j.Environment != "" {
		env = append(env, "CI_ENVIRONMENT_NAME="+j.Environment)
	}
	for i, v := range j.Variables {
		val := v.Value
		if v.File {
			name := "var-" + strconv.Itoa(i) + "-" + v.Key
			if err := os.WriteFile(filepath.Join(e.dir, name), []byte(v.Value), 0o444); err != nil {
				return nil, fmt.Errorf("writing file variable %s: %w", v.Key, err)
			}
			val = containerRunDir + "/" + name
		}
		env = append(env, v.Key+"="+val)
	}
	return env, nil
}

func (e *execution) runSteps(ctx, jobCtx context.Context, res *Result) {
	failed := false
	for _, s := range e.j.Steps {
		run := s.When == job.Always || (s.When == job.OnSuccess && !failed) || (s.When == job.OnFailure && failed)
		if ctx.Err() != nil || (jobCtx.Err() != nil && s.When != job.Always) {
			run = false
		}
		if !run {
			res.Steps = append(res.Steps, StepResult{Name: s.Name, Skipped: true, ExitCode: -1})
			continue
		}
		sr := e.step(ctx, jobCtx, s)
		res.Steps = append(res.Steps, sr)
		if failed || s.When == job.Always {
			continue // decided already, or a step that never decides (after_script)
		}
		switch {
		case sr.Err != nil:
			failed = true
			res.Err = sr.Err
			res.State, res.Reason = Failed, RunnerSystemFailure
			if jobCtx.Err() != nil {
				e.r.endState(res, ctx, jobCtx)
			}
		case sr.ExitCode != 0 && !s.AllowFailure:
			failed = true
			res.State, res.Reason, res.ExitCode = Failed, ScriptFailure, sr.ExitCode
		}
	}
	if jobCtx.Err() != nil && !failed {
		e.r.endState(res, ctx, jobCtx)
		return
	}
	if !failed {
		res.State, res.Reason = Success, ""
	}
}

// step runs one step. Steps that run "always" get a context of their own,
// bounded by their timeout, so that they still run after the job was
// cancelled or timed out; only an abort (ctx) stops them.
func (e *execution) step(ctx, jobCtx context.Context, s job.Step) StepResult {
	for _, h := range e.r.Hooks {
		h.StepStarted(e.j, s.Name)
	}
	stepCtx := jobCtx
	if s.When == job.Always {
		timeout := s.Timeout
		if timeout == 0 {
			timeout = DefaultAfterTimeout
		}
		var cancel context.CancelFunc
		stepCtx, cancel = context.WithTimeoutCause(ctx, timeout, ErrTimeout)
		defer cancel()
	} else if s.Timeout > 0 {
		var cancel context.CancelFunc
		stepCtx, cancel = context.WithTimeoutCause(jobCtx, s.Timeout, ErrTimeout)
		defer cancel()
	}
	fmt.Fprintf(e.out, "\x1b[36;1m>>> step %s\x1b[0;m\n", s.Name)
	start := time.Now()
	code, err := e.ctr.Exec(stepCtx, executors.Exec{
		Cmd:     stepShell,
		Env:     e.env,
		WorkDir: e.r.cfg.WorkDir,
		User:    e.r.cfg.User,
		Stdin:   strings.NewReader(stepScript(s.Script)),
		Stdout:  e.out,
		Stderr:  e.out,
		Grace:   e.r.cfg.Grace,
	})
	sr := StepResult{Name: s.Name, ExitCode: code, Duration: time.Since(start), Err: err}
	if err != nil {
		sr.ExitCode = -1
		fmt.Fprintf(e.out, "\x1b[31;1mstep %s stopped: %v\x1b[0;m\n", s.Name, err)
	}
	for _, h := range e.r.Hooks {
		h.StepFinished(e.j, sr)
	}
	return sr
}

// teardown undoes everything prepare did, whatever state it reached.
func (e *execution) teardown(ctx context.Context) error {
	var errs []error
	if e.ctr != nil {
		if err := e.ctr.Destroy(ctx); err != nil {
			errs = append(errs, fmt.Errorf("removing container of job %s: %w", e.j.ID, err))
		}
	}
	if e.dir != "" {
		if err := os.RemoveAll(e.dir); err != nil {
			errs = append(errs, fmt.Errorf("removing runtime directory of job %s: %w", e.j.ID, err))
		}
	}
	return errors.Join(errs...)
}
