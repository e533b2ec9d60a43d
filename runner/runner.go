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
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/procs"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/mask"
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

	// Hooks observe the job's lifecycle (metrics, for example). Each hook
	// must return quickly.
	Hooks []Hook

	// Optional parts. A job that declares what a missing part provides
	// (egress, secrets) is refused before anything of it runs.
	Network *Network        // per-job netns, firewall and egress gateway
	Broker  *secrets.Broker // grants, minting and revocation of credentials
	Audit   *Auditor        // tamper-evident trail of every job

	owner   procs.Owner
	docker  *docker.Executor // for recovery, when Open built the runner
	closers *closers
	metrics atomic.Pointer[Metrics]
}

// SetMetrics makes the runner count its jobs, egress decisions and
// credentials in m.
func (r *Runner) SetMetrics(m *Metrics) {
	r.metrics.Store(m)
	r.Hooks = append(r.Hooks, m)
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
	owner, err := procs.Self()
	if err != nil {
		return nil, fmt.Errorf("creating runner: %w", err)
	}
	return &Runner{cfg: cfg, exec: exec, log: log, owner: owner}, nil
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
	// AwaitAudit makes Run wait (bounded by the cleanup timeout) until the
	// sealed audit trail is in the directory sink, so that
	// Result.AuditTrail can be read (e.g. uploaded) when Run returns.
	AwaitAudit bool
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
	masker := mask.New(out, append(j.Masked(), o.Mask...)...)
	res = &Result{State: Failed, Reason: RunnerSystemFailure}
	e := &execution{r: r, j: j, log: log, out: masker, masker: masker, opts: o}
	for _, h := range r.Hooks {
		h.JobStarted(j)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.CleanupTimeout)
		defer cancel()
		res.Duration = time.Since(start)
		err = e.finish(cctx, res)
		if err != nil {
			log.Error("teardown failed", "error", err)
		}
		if cerr := masker.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("flushing job output: %w", cerr)
		}
		for _, h := range r.Hooks {
			h.JobFinished(j, res)
		}
	}()

	if err := j.Validate(); err != nil {
		res.Reason, res.Err = ConfigurationError, fmt.Errorf("invalid job: %w", err)
		return res, nil
	}
	if r.Audit != nil {
		// No job runs unaudited: a trail that cannot be written fails it.
		var err error
		if e.trail, err = r.Audit.open(r.cfg.RunnerID, j, masker.MaskString, log); err != nil {
			res.Err = err
			return res, nil
		}
		if err := e.trail.record(ctx, audit.NewJobAccepted(string(j.Source), j.Repo, j.Ref, j.SHA, j.Protected, j.Environment, j.Image)); err != nil {
			res.Err = err
			return res, nil
		}
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

	fmt.Fprintf(masker, "Running job %s on runner %s\n", j.ID, r.cfg.RunnerID)
	if err := e.decide(jobCtx); err != nil {
		res.Err = err
		var denied *DeniedError
		if errors.As(err, &denied) {
			res.Reason = Unauthorized
			fmt.Fprintf(masker, "\x1b[31;1mJob refused before running: %v\x1b[0;m\n", err)
		} else {
			fmt.Fprintf(masker, "\x1b[31;1mPreparing the job's credentials and network failed: %v\x1b[0;m\n", err)
		}
		return res, nil
	}
	fmt.Fprintf(masker, "Preparing a hardened container from %s\n", j.Image)
	if err := e.prepare(jobCtx); err != nil {
		res.Err = err
		if errors.Is(err, executors.ErrImageNotFound) {
			res.Reason = ImagePullFailure
		}
		if jobCtx.Err() != nil {
			r.endState(res, ctx, jobCtx)
		}
		fmt.Fprintf(masker, "\x1b[31;1mPreparing the job failed: %v\x1b[0;m\n", err)
		return res, nil
	}
	e.runSteps(ctx, jobCtx, res)
	return res, nil
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
	r      *Runner
	j      *job.Job
	log    hclog.Logger
	out    io.Writer // masked
	masker *mask.Writer
	opts   RunOptions

	trail  *jobTrail
	dir    string // runtime directory on the host
	policy *netpolicy.Policy
	creds  *jobCredentials
	ctr    executors.Container
	net    *jobNetwork
	env    []string
}

// decide settles what the job may use before anything of it exists: its
// effective egress and its credentials (minted here). A declaration the
// admin's policy does not allow is a *DeniedError.
func (e *execution) decide(ctx context.Context) error {
	j, r := e.j, e.r
	if len(j.Secrets) > 0 && r.Broker == nil {
		return &DeniedError{Err: fmt.Errorf("the job declares secrets (%s), but this runner has no secret store", j.Secrets[0].Name)}
	}
	if len(j.Egress) > 0 && r.Network == nil {
		return &DeniedError{Err: fmt.Errorf("the job declares egress (%s), but this runner has no egress gateway", j.Egress[0])}
	}
	if r.Network != nil {
		p, err := r.Network.policy(j)
		if err != nil {
			return err
		}
		e.policy = p
	}
	dir, err := r.makeRuntimeDir(j.ID)
	if err != nil {
		return err
	}
	e.dir = dir
	if len(j.Secrets) == 0 {
		return nil
	}
	jc, err := r.credentials(ctx, j, e.dir)
	e.creds = jc // release whatever was minted, also on error
	if jc != nil {
		e.masker.Add(jc.mask...)
	}
	if err != nil {
		return err
	}
	if e.policy != nil && len(jc.bound) > 0 {
		hosts, err := netpolicy.ParseEntries(jc.hosts)
		if err != nil {
			return fmt.Errorf("credential hosts: %w", err)
		}
		e.policy.Allow = append(e.policy.Allow, hosts...)
		e.policy.Credentials = jc.bound
	}
	return nil
}

func (e *execution) prepare(ctx context.Context) error {
	env, err := e.variables()
	if err != nil {
		return err
	}
	mounts := []executors.Mount{{Source: e.dir, Target: containerRunDir}}
	resolv := filepath.Join(e.dir, "resolv.conf")
	if e.r.Network != nil {
		// Written again once the gateway's address is known (same inode,
		// so the bind mount shows the new content).
		if err := os.WriteFile(resolv, []byte("# the job's gateway is not up yet\n"), 0o444); err != nil {
			return fmt.Errorf("writing resolv.conf: %w", err)
		}
		mounts = append(mounts, executors.Mount{Source: resolv, Target: "/etc/resolv.conf"})
		if err := os.WriteFile(filepath.Join(e.dir, "ca.pem"), e.r.Network.trustBundle(), 0o444); err != nil {
			return fmt.Errorf("writing the job's CA bundle: %w", err)
		}
		env = append(env, caVariables(containerRunDir+"/ca.pem")...)
	}
	ctr, err := e.r.exec.Create(ctx, executors.Spec{
		RunnerID: e.r.cfg.RunnerID,
		JobID:    e.j.ID,
		Image:    e.j.Image,
		Pull:     e.r.cfg.Pull,
		Limits:   e.r.cfg.Limits,
		WorkDir:  e.r.cfg.WorkDir,
		User:     e.r.cfg.User,
		Mounts:   mounts,
		Labels:   map[string]string{labelOwner: e.r.owner.String()},
	})
	if err != nil {
		return fmt.Errorf("preparing container: %w", err)
	}
	e.ctr = ctr
	if e.r.Network != nil {
		m := e.r.metrics.Load()
		var rec *gatewayRecorder
		if e.trail != nil {
			rec = newGatewayRecorder(e.trail, e.creds)
		}
		events := func(ev netpolicy.Event) {
			m.egressEvent(ev)
			if rec != nil {
				rec.record(ev)
			}
		}
		jn, err := e.r.Network.attach(ctx, e.j.ID, ctr.NetNS(), e.policy, events)
		if err != nil {
			return fmt.Errorf("isolating the job's network: %w", err)
		}
		e.net = jn
		if err := rewriteInPlace(resolv, resolvConf(jn.gateway())); err != nil {
			return fmt.Errorf("writing resolv.conf: %w", err)
		}
		env = append(env, jn.env()...)
	}
	if e.creds != nil {
		env = append(env, e.creds.env...)
	}
	e.env = env
	if e.opts.Workspace != nil {
		if err := e.workspace(ctx); err != nil {
			return err
		}
	}
	return nil
}

// makeRuntimeDir creates the job's runtime directory with its owner file
// in place: it is made under a temporary name and renamed, so that a
// recovery running beside it never sees it without an owner and removes it.
func (r *Runner) makeRuntimeDir(jobID string) (string, error) {
	base := filepath.Join(r.cfg.RuntimeDir, "jobs")
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", fmt.Errorf("creating runtime directory: %w", err)
	}
	tmp, err := os.MkdirTemp(base, ".new-")
	if err != nil {
		return "", fmt.Errorf("creating runtime directory for job %s: %w", jobID, err)
	}
	dir := filepath.Join(base, r.cfg.RunnerID+"-"+jobID)
	err = errors.Join(
		os.Chmod(tmp, 0o755),
		os.WriteFile(filepath.Join(tmp, ownerFile), []byte(r.owner.String()+"\n"), 0o444),
	)
	if err == nil {
		// Rename replaces an empty directory: refuse an existing one.
		if _, serr := os.Lstat(dir); serr == nil {
			err = fmt.Errorf("%s exists already", dir)
		} else {
			err = os.Rename(tmp, dir)
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("creating runtime directory for job %s: %w", jobID, err)
	}
	return dir, nil
}

// rewriteInPlace replaces a file's content keeping its inode.
func rewriteInPlace(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	return errors.Join(werr, f.Close())
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
	e.trail.note(ctx, audit.NewStepStarted(s.Name))
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
	e.trail.note(ctx, audit.NewStepFinished(s.Name, sr.ExitCode, sr.Duration))
	for _, h := range e.r.Hooks {
		h.StepFinished(e.j, sr)
	}
	return sr
}

// finish undoes everything decide and prepare did, whatever state they
// reached, on every path. The container is stopped and removed while the
// job's network is torn down and its credentials revoked (cutting the
// network and revoking before the job's last process is gone only makes
// its end stricter); the audit trail is sealed last so that it records
// the revocations.
func (e *execution) finish(ctx context.Context, res *Result) error {
	var errs []error
	destroyed := make(chan error, 1)
	if e.ctr != nil {
		go func() { destroyed <- e.ctr.Destroy(ctx) }()
	} else {
		destroyed <- nil
	}
	if e.net != nil {
		res.Egress = e.net.summary()
		if err := e.net.close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if e.creds != nil {
		if err := e.r.release(ctx, e.j.ID, e.creds); err != nil {
			errs = append(errs, err)
		}
	}
	if err := <-destroyed; err != nil {
		errs = append(errs, fmt.Errorf("removing container of job %s: %w", e.j.ID, err))
	}
	if e.dir != "" {
		if err := os.RemoveAll(e.dir); err != nil {
			errs = append(errs, fmt.Errorf("removing runtime directory of job %s: %w", e.j.ID, err))
		}
	}
	if e.trail != nil {
		if len(errs) > 0 {
			e.trail.note(ctx, audit.NewAlert("teardown", errors.Join(errs...).Error(), nil))
		}
		path, err := e.r.Audit.seal(ctx, e.trail, res)
		if err != nil {
			errs = append(errs, err)
		} else {
			res.AuditTrail = path
			if e.opts.AwaitAudit {
				if err := awaitDelivered(ctx, path); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}
