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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors"
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
	// AllowedPull are the pull policies a job may ask for instead
	// (job.Job.Pull); empty: Pull alone.
	AllowedPull []executors.PullPolicy
	// AllowedImages are the images a job may run in (its own, a step's
	// own container's) and AllowedServices those beside it: patterns of
	// executors.ImageAllowed; empty: any.
	AllowedImages, AllowedServices []string
	// Limits for job containers (zero fields: the executor's defaults).
	Limits executors.Limits
	// ServiceLimits replace Limits' fields they set for service
	// containers.
	ServiceLimits executors.Limits
	// User runs the steps ("" = the image's user).
	User string
	// ServiceWait bounds the health check of a job's services (0:
	// DefaultServiceWait, negative: no check).
	ServiceWait time.Duration
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
	// LeakScan scans each job's change for credentials before its code
	// runs (nil: no scan).
	LeakScan *LeakScan

	owner   procs.Owner
	closeMu sync.Mutex
	closers []func() error
	metrics atomic.Pointer[Metrics]
	pool    atomic.Pointer[Pool] // warm sandboxes, when StartPool was called
	// running counts the jobs in Run, which the pool's refills count
	// against PoolConfig.Concurrent.
	running atomic.Int64
}

// ID is the runner id that labels everything the runner creates.
func (r *Runner) ID() string { return r.cfg.RunnerID }

// OnClose registers f to run at Close; functions run in reverse order of
// registration. The wiring (internal/wiring) registers what it built.
func (r *Runner) OnClose(f func() error) {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	r.closers = append(r.closers, f)
}

// holdsNetworks reports whether the executor can make a network holder
// (executors.NetworkHolder) for a pooled network, else why not.
func (r *Runner) holdsNetworks() (executors.NetworkHolder, error) {
	nh, ok := r.exec.(executors.NetworkHolder)
	if !ok {
		return nil, errors.New("the executor can neither start a container in a namespace it is given nor join a network holder's")
	}
	return nh, nh.HoldsNetworks()
}

// joinsNetNS reports whether the executor starts containers in a network
// namespace it is given (executors.NamespaceJoiner) rather than making one.
func (r *Runner) joinsNetNS() bool {
	nj, ok := r.exec.(executors.NamespaceJoiner)
	return ok && nj.JoinsNetNS()
}

// Close drains the warm pool, then runs what OnClose registered, and
// returns every failure. Jobs must have finished.
func (r *Runner) Close() error {
	r.closeMu.Lock()
	fns := r.closers
	r.closers = nil
	r.closeMu.Unlock()
	errs := []error{r.ClosePool(context.Background())}
	for i := len(fns) - 1; i >= 0; i-- {
		errs = append(errs, fns[i]())
	}
	return errors.Join(errs...)
}

// CredentialEvent records a credential broker event in the metrics and
// the job's audit trail: the broker's Events callback.
func (r *Runner) CredentialEvent(ctx context.Context, e secrets.Event) error {
	r.metrics.Load().credentialEvent(e)
	if r.Audit == nil {
		return nil
	}
	return r.Audit.brokerEvent(ctx, e)
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
	// Collect, if set, runs after the last step (and after a failure to
	// prepare the sources, once the container exists) while the job's
	// container still exists: state is how the job went, fetch copies a
	// path of the working directory (relative, "." for all of it) out to
	// a host directory, symlinks as symlinks. It archives caches and
	// artifacts (GitLab's). An error fails a job that had succeeded, with
	// the reason of a *job.ReasonError it wraps (default script_failure).
	Collect func(ctx context.Context, state job.State, fetch func(ctx context.Context, rel, dst string) error, out io.Writer) error
	// ResolveSecrets, if set, resolves secrets from a store the job's
	// coordinator names (GitLab's secrets:, see job.SecretResolver) before
	// anything of the job exists; revoke runs at teardown.
	ResolveSecrets func(ctx context.Context, log io.Writer) (vars []job.Variable, reads []job.SecretRead, revoke func(context.Context) error, err error)
	// AwaitAudit makes Run wait (bounded by the cleanup timeout) until the
	// sealed audit trail is in the directory sink, so that
	// Result.AuditTrail can be read (e.g. uploaded) when Run returns.
	AwaitAudit bool
	// Driver, if set, decides and runs the job's steps with its
	// coordinator's semantics (GitHub's); see job.StepDriver.
	Driver StepDriver
	// GitDir is a host-side repository holding the job's BeforeSHA..SHA:
	// the leak scan runs there before anything of the job exists. Without
	// it, a Workspace clone is scanned instead.
	GitDir string
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
	res = &Result{State: Failed, Reason: RunnerSystemFailure, Mask: masker.MaskFold}
	e := &execution{r: r, j: j, log: log, out: masker, masker: masker, opts: o}
	for _, h := range r.Hooks {
		h.JobStarted(j)
	}
	r.running.Add(1)
	defer r.running.Add(-1)
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

	if o.Driver == nil {
		// run:/uses: steps mean what their coordinator's driver says;
		// without one they must not pass for empty scripts.
		for _, s := range j.Steps {
			if s.Kind != job.StepScript {
				res.Reason, res.Err = ConfigurationError, fmt.Errorf("invalid job: step %q is a %s step, which needs its coordinator's step driver, and none was given", s.Name, s.Kind)
				return res, nil
			}
		}
	}
	if err := j.Validate(); err != nil {
		res.Reason, res.Err = ConfigurationError, fmt.Errorf("invalid job: %w", err)
		return res, nil
	}
	if _, err := below(r.cfg.WorkDir, j.WorkDir); j.WorkDir != "" && err != nil {
		// Below it: with read_only, the writable tmpfs is the runner's.
		res.Reason, res.Err = ConfigurationError, fmt.Errorf("invalid job: work dir %s is not below the runner's %s", j.WorkDir, r.cfg.WorkDir)
		return res, nil
	}
	if o.Driver != nil && (len(j.StepEntrypoint) > 0 || j.EntrypointFromImage) {
		res.Reason, res.Err = ConfigurationError, errors.New("invalid job: a step entrypoint is for script steps; this job's coordinator drives its steps")
		return res, nil
	}
	if r.Audit != nil {
		// No job runs unaudited: a trail that cannot be written fails it.
		var err error
		if e.trail, err = r.Audit.open(r.cfg.RunnerID, j, masker.MaskFold, log); err != nil {
			res.Err = err
			return res, nil
		}
		if err := e.trail.record(ctx, audit.NewJobAccepted(string(j.Source), j.Instance, j.Repo, j.Ref, j.SHA, j.Protected, j.Environment, j.Image)); err != nil {
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
	if err := e.choosePull(); err != nil {
		res.Reason, res.Err = ConfigurationError, err
		fmt.Fprintf(masker, "\x1b[31;1mERROR: %v\x1b[0;m\n", err)
		return res, nil
	}
	if o.ResolveSecrets != nil {
		if err := e.resolveSecrets(jobCtx); err != nil {
			res.Reason, res.Err = ConfigurationError, err
			var re *job.ReasonError
			if errors.As(err, &re) {
				res.Reason = re.Reason
			}
			fmt.Fprintf(masker, "\x1b[31;1mERROR: %v\x1b[0;m\n", err)
			return res, nil
		}
	}
	if err := e.beforeCode(jobCtx); err != nil {
		res.Err = err
		var denied *DeniedError
		if errors.As(err, &denied) {
			res.Reason = Unauthorized
			fmt.Fprintf(masker, "\x1b[31;1mJob refused before running: %v\x1b[0;m\n", err)
		} else {
			var re *job.ReasonError // e.g. a dependency's artifacts (sources fetched early)
			if errors.As(err, &re) {
				res.Reason = re.Reason
			}
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
		var re *job.ReasonError
		if errors.As(err, &re) {
			res.Reason = re.Reason
		}
		fmt.Fprintf(masker, "\x1b[31;1mPreparing the job failed: %v\x1b[0;m\n", err)
		e.collect(ctx, res)
		return res, nil
	}
	if o.Driver != nil {
		e.runDriven(ctx, jobCtx, res)
	} else if err := e.resolveEntrypoint(jobCtx); err != nil {
		res.Err = err
		if jobCtx.Err() != nil {
			r.endState(res, ctx, jobCtx)
		}
		fmt.Fprintf(masker, "\x1b[31;1mPreparing the job failed: %v\x1b[0;m\n", err)
	} else {
		e.runSteps(ctx, jobCtx, res)
	}
	e.collect(ctx, res)
	return res, nil
}

// resolveEntrypoint sets the command of the job's script steps: the
// shell, after the job's step entrypoint (its own, or its image's
// ENTRYPOINT read from the executor) when that is more than a shell.
func (e *execution) resolveEntrypoint(ctx context.Context) error {
	ep := e.j.StepEntrypoint
	if e.j.EntrypointFromImage {
		ic, ok := e.ctr.(executors.ImageCommander)
		if !ok {
			return errors.New("this executor cannot read the image's ENTRYPOINT, which the job's steps run through")
		}
		cmd, err := ic.ImageCommand(ctx)
		if err != nil {
			return err
		}
		ep = cmd.Entrypoint
	}
	e.stepCmd = stepShell
	if job.ShellEntrypoint(ep) {
		return nil
	}
	whose := "the job's"
	if e.j.EntrypointFromImage {
		whose = "the image's"
	}
	fmt.Fprintf(e.out, "Running every step through %s entrypoint %q (image: entrypoint: [\"\"] runs the steps in the shell directly)\n", whose, ep)
	e.stepCmd = append(slices.Clip(ep), stepShell...)
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
	r      *Runner
	j      *job.Job
	log    hclog.Logger
	out    io.Writer // masked
	masker *mask.Writer
	// scanned: the leak scan ran (once per job).
	scanned bool
	// wsDir is the host-side clone made before anything of the job
	// (cloneEarly), removed by wsCleanup.
	wsDir     string
	wsCleanup func()
	opts      RunOptions

	trail  *jobTrail
	dir    string // runtime directory on the host
	policy *netpolicy.Policy
	creds  *jobCredentials
	ctr    executors.Container
	net    *jobNetwork
	env    []string
	warm   *warmSandbox // the pooled sandbox the job claimed
	warmAt time.Time    // when it claimed it
	// holder keeps the namespace of the pooled network the job claimed
	// (executors.NetworkHolder); removed after the job's container.
	holder executors.Holder

	// stepCmd is what every script step runs: the shell, wrapped in
	// the job's step entrypoint when it has one (resolveEntrypoint).
	stepCmd []string

	services  *jobServices
	svcMounts []executors.Mount // what services mount (hosts, resolv.conf)
	// pull and svcPull are the pull policies of the job's image and of
	// each service's, tried in turn (choosePull).
	pull    []executors.PullPolicy
	svcPull [][]executors.PullPolicy

	secretsRevoke func(context.Context) error
	secretReads   []job.SecretRead
}

// beforeCode is everything decided before any of the job exists: the leak
// scan of its change (where the sources are on the host already), then
// grants and egress.
func (e *execution) beforeCode(ctx context.Context) error {
	if err := e.cloneEarly(ctx); err != nil {
		return err
	}
	if err := e.leakScan(ctx, e.opts.GitDir); err != nil {
		return err
	}
	return e.decide(ctx)
}

// decide settles what the job may use before anything of it exists: its
// effective egress and its credentials (minted here). A declaration the
// admin's policy does not allow is a *DeniedError.
func (e *execution) decide(ctx context.Context) error {
	j, r := e.j, e.r
	if err := r.checkImages(j); err != nil {
		return err
	}
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
	e.bindServiceCredentials()
	var w *warmSandbox
	r.pool.Load().note(j)
	if warmable(j) && e.user() == r.cfg.User {
		// A warm sandbox's container has no /etc/hosts for services'
		// aliases, and runs as the runner's user with the runner's
		// /dev/shm and work directory.
		w = r.pool.Load().claim(ctx, j, e.firstPull())
	}
	if w != nil {
		// Owned by the job from here: finish destroys it.
		e.warm, e.warmAt, e.dir, e.ctr = w, time.Now(), w.dir, w.ctr
		e.log.Debug("claimed a warm sandbox", "sandbox", w.id)
	} else {
		dir, err := r.makeRuntimeDir(j.ID)
		if err != nil {
			return err
		}
		e.dir = dir
	}
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
		e.policy.Credentials = append(e.policy.Credentials, jc.bound...)
	}
	return nil
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
			switch {
			case errors.Is(sr.Err, ErrTimeout):
				res.Reason = JobTimeout // the step's own timeout
			case errors.Is(sr.Err, executors.ErrContainerStopped):
				// Its code stopped its container's init, or used memory
				// until the kernel killed it: the job's failure.
				res.Reason = ScriptFailure
			}
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
	if e.debugTrace() {
		fmt.Fprintf(e.out, "\x1b[33;1mCI_DEBUG_TRACE is on: the shell prints every command with its variables expanded (masked values stay masked)\x1b[0;m\n")
	}
	e.trail.note(ctx, audit.NewStepStarted(s.Name))
	start := time.Now()
	code, err := e.ctr.Exec(stepCtx, executors.Exec{
		Cmd:     e.stepCmd,
		Env:     e.env,
		WorkDir: e.workDir(),
		User:    e.user(),
		Stdin:   strings.NewReader(stepScript(s.Script, e.debugTrace())),
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
		go func() {
			// Services first: they share the job container's namespace.
			serr := e.stopServices(ctx)
			destroyed <- errors.Join(serr, e.ctr.Destroy(ctx))
		}()
	} else {
		destroyed <- nil
	}
	e.dropEarlyClone()
	if e.net != nil {
		// Closing flushes the job's queued gateway events into its trail;
		// the summary taken afterwards is final and agrees with it.
		if err := e.net.close(ctx); err != nil {
			errs = append(errs, err)
		}
		res.Egress = e.net.summary()
	}
	if e.warm != nil {
		// A claimed sandbox whose job ended before its network was
		// registered.
		if err := e.warm.closeNet(ctx, e.r.Network); err != nil {
			errs = append(errs, err)
		}
	}
	if e.creds != nil {
		if err := e.r.release(ctx, e.j.ID, e.creds); err != nil {
			errs = append(errs, err)
		}
	}
	if err := e.revokeSecrets(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := <-destroyed; err != nil {
		errs = append(errs, fmt.Errorf("removing container of job %s: %w", e.j.ID, err))
	}
	if e.holder != nil {
		if err := e.holder.Destroy(ctx); err != nil {
			errs = append(errs, fmt.Errorf("removing the network holder of job %s: %w", e.j.ID, err))
		}
	}
	if e.dir != "" {
		if err := removeRuntimeDir(e.dir); err != nil {
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
