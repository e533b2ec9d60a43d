package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
)

// prepare makes the job's container and network — cold, or in the warm
// sandbox it claimed — and its steps' environment.
func (e *execution) prepare(ctx context.Context) error {
	env, err := e.variables()
	if err != nil {
		return err
	}
	if e.r.Network != nil {
		env = append(env, caVariables(containerRunDir+"/ca.pem")...)
	}
	if e.warm != nil {
		return e.prepareWarm(ctx, env)
	}
	mounts, err := e.r.runtimeMounts(e.dir)
	if err != nil {
		return err
	}
	resolv := filepath.Join(e.dir, "resolv.conf")
	if len(e.j.Services) > 0 {
		hosts, err := e.writeHosts()
		if err != nil {
			return err
		}
		mounts = append(mounts, executors.Mount{Source: hosts, Target: "/etc/hosts"})
		e.svcMounts = append(e.svcMounts, executors.Mount{Source: hosts, Target: "/etc/hosts"})
		if e.r.Network != nil {
			e.svcMounts = append(e.svcMounts, executors.Mount{Source: resolv, Target: "/etc/resolv.conf"})
		}
	}
	isolated := func(jn *jobNetwork, err error) error {
		if err != nil {
			return fmt.Errorf("isolating the job's network: %w", err)
		}
		e.net = jn
		if err := rewriteInPlace(resolv, resolvConf(jn.gateway())); err != nil {
			return fmt.Errorf("writing resolv.conf: %w", err)
		}
		env = append(env, jn.env()...)
		return nil
	}
	spec := executors.Spec{
		RunnerID: e.r.cfg.RunnerID,
		JobID:    e.j.ID,
		Image:    e.j.Image,
		Limits:   e.limits(),
		WorkDir:  e.workDir(),
		User:     e.user(),
		Mounts:   mounts,
		Labels:   map[string]string{labelOwner: e.r.owner.String()},

		RegistryAuth: e.registryAuth(),
	}
	// An executor that joins a namespace gets one that is plumbed and
	// firewalled before any process of the job exists.
	joins := e.r.Network != nil && e.r.joinsNetNS()
	coldEnv := len(env)
	if joins {
		if err := isolated(e.attachNew(ctx)); err != nil {
			return err
		}
		spec.NetNS = e.net.netns
	} else if w := e.r.pool.Load().claimNet(); w != nil {
		// A pooled network held by a holder the container joins.
		e.holder, w.holder = w.holder, nil
		if err := isolated(e.registerPooled(ctx, w)); err != nil {
			return err
		}
		spec.NetHolder = e.holder.ID()
		if heldNetworkClaimed != nil {
			heldNetworkClaimed(e.holder)
		}
	}
	create := func() (ctr executors.Container, err error) {
		err = e.withPull(spec.Image, e.pull, func(p executors.PullPolicy) error {
			spec.Pull = p
			ctr, err = e.r.exec.Create(ctx, spec)
			return err
		})
		return ctr, err
	}
	ctr, err := create()
	if err != nil && e.holder != nil && ended(e.holder) {
		// The holder stopped between its claim and now (an admin's rm,
		// the OOM killer): the job's network is made on its path.
		e.log.Warn("the network holder the job claimed stopped before its container joined it; making the job's network now", "job", e.j.ID, "holder", e.holder.ID(), "error", err)
		e.r.pool.Load().countDead(poolNetworks)
		if derr := e.dropPooledNetwork(ctx); derr != nil {
			return fmt.Errorf("preparing container: %w", errors.Join(err, derr))
		}
		env = env[:coldEnv]
		spec.NetHolder = ""
		ctr, err = create()
	}
	if err != nil {
		return fmt.Errorf("preparing container: %w", err)
	}
	e.ctr = ctr
	if e.r.Network != nil && e.net == nil {
		t0 := time.Now()
		jn, err := e.r.Network.attach(ctx, e.j.ID, ctr.NetNS(), e.policy, e.masker.MaskFold, e.netEvents())
		if err == nil {
			e.log.Debug("job network attached", "job", e.j.ID, "took", time.Since(t0))
		}
		if err := isolated(jn, err); err != nil {
			return err
		}
	}
	return e.ready(ctx, env)
}

// limits are the runner's container limits with the job's /dev/shm.
func (e *execution) limits() executors.Limits {
	l := e.r.cfg.Limits
	l.ShmSize = e.j.ShmSize
	return l
}

// workDir is where the job's sources are and its steps run: the job's
// own (GitLab's GIT_CLONE_PATH, below the runner's), else the runner's.
func (e *execution) workDir() string {
	if e.j.WorkDir != "" {
		return e.j.WorkDir
	}
	return e.r.cfg.WorkDir
}

// user is who runs the job's container: the job's (GitLab's
// image:docker:user), else the runner's.
func (e *execution) user() string {
	if e.j.User != "" {
		return e.j.User
	}
	return e.r.cfg.User
}

// heldNetworkClaimed, when set (tests), is called with the holder of a
// pooled network a job claimed, before its container is created.
var heldNetworkClaimed func(executors.Holder)

// ended reports whether x is known to have stopped (executors.Liveness).
func ended(x any) bool {
	l, ok := x.(executors.Liveness)
	return ok && !l.Alive()
}

// dropPooledNetwork unregisters the job from the pooled network it
// claimed and removes the network and its holder.
func (e *execution) dropPooledNetwork(ctx context.Context) error {
	var errs []error
	if e.net != nil {
		errs = append(errs, e.net.close(ctx))
		e.net = nil
	}
	if e.holder != nil {
		if err := e.holder.Destroy(ctx); err != nil {
			errs = append(errs, fmt.Errorf("removing the network holder of job %s: %w", e.j.ID, err))
		}
		e.holder = nil
	}
	return errors.Join(errs...)
}

// attachNew gives the job of an executor that joins a namespace its
// network before any of its processes exists: a namespace the pool
// plumbed and firewalled ahead ([pool] networks), its policy registered
// now, else one made now.
func (e *execution) attachNew(ctx context.Context) (*jobNetwork, error) {
	if w := e.r.pool.Load().claimNet(); w != nil {
		return e.registerPooled(ctx, w)
	}
	t0 := time.Now()
	jn, err := e.r.Network.attachNew(ctx, e.j.ID, e.policy, e.masker.MaskFold, e.netEvents())
	if err == nil {
		e.log.Debug("job network attached", "job", e.j.ID, "took", time.Since(t0))
	}
	return jn, err
}

// registerPooled registers the job's policy with the gateway on the
// network of a pooled sandbox, which the job's network owns from then on
// (its namespace too, made under the sandbox's id), also on error.
func (e *execution) registerPooled(ctx context.Context, w *warmSandbox) (*jobNetwork, error) {
	t0 := time.Now()
	jn, err := e.r.Network.register(ctx, e.j.ID, w.sb, e.policy, e.masker.MaskFold, e.netEvents())
	w.sb = nil
	if w.netns != "" {
		if jn != nil {
			jn.netns, jn.netnsID = w.netns, w.id
		} else if derr := e.r.Network.Sandbox.DeleteNetNS(w.id); derr != nil {
			err = errors.Join(err, derr)
		}
		w.netns = ""
	}
	if err != nil {
		return nil, err
	}
	e.log.Debug("warm network registered", "job", e.j.ID, "took", time.Since(t0))
	return jn, nil
}

// prepareWarm readies a claimed warm sandbox: the container and its
// firewalled network exist; the job's policy is registered with the
// gateway (from now on its gateway answers), then sources are copied in.
func (e *execution) prepareWarm(ctx context.Context, env []string) error {
	w := e.warm
	if w.sb != nil {
		// The only network work left on a warm job's path.
		jn, err := e.registerPooled(ctx, w)
		if err != nil {
			return fmt.Errorf("isolating the job's network: %w", err)
		}
		e.net = jn
		env = append(env, jn.env()...)
	}
	if err := e.ready(ctx, env); err != nil {
		return err
	}
	e.r.metrics.Load().PoolClaimed(time.Since(e.warmAt))
	return nil
}

// ready completes the steps' environment and copies the job's sources in.
func (e *execution) ready(ctx context.Context, env []string) error {
	if e.creds != nil {
		env = append(env, e.creds.env...)
	}
	e.env = env
	if len(e.j.Services) > 0 {
		// After the network is isolated: the services share its policy.
		if err := e.startServices(ctx, e.svcMounts); err != nil {
			return err
		}
	}
	if e.opts.Workspace != nil {
		if err := e.workspace(ctx); err != nil {
			return err
		}
	}
	return nil
}

// netEvents routes the job's gateway events, a batch at a time, to
// metrics and its trail.
func (e *execution) netEvents() func([]netpolicy.Event) {
	m := e.r.metrics.Load()
	var rec *gatewayRecorder
	if e.trail != nil {
		rec = newGatewayRecorder(e.trail, e.creds)
	}
	return func(evs []netpolicy.Event) {
		for _, ev := range evs {
			m.egressEvent(ev)
		}
		if rec != nil {
			rec.record(evs)
		}
	}
}

// runtimeMounts prepares a runtime directory's shared files and returns
// the mounts of a job container: the directory itself (read-only) and,
// with a network, the resolv.conf written once the gateway's address is
// known (same inode, so the bind mount shows the new content) and the CA
// bundle.
func (r *Runner) runtimeMounts(dir string) ([]executors.Mount, error) {
	mounts := []executors.Mount{{Source: dir, Target: containerRunDir}}
	if r.Network == nil {
		return mounts, nil
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("# the job's gateway is not up yet\n"), 0o444); err != nil {
		return nil, fmt.Errorf("writing resolv.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), r.Network.trustBundle(), 0o444); err != nil {
		return nil, fmt.Errorf("writing the job's CA bundle: %w", err)
	}
	return append(mounts, executors.Mount{Source: resolv, Target: "/etc/resolv.conf"}), nil
}

// makeRuntimeDir creates the job's runtime directory and returns the part
// of it the job sees (mounted at /run/airlock): <runner>-<job>/run. The
// owner file stays beside it, out of the job's view (the runner's host pid
// and start time are none of the job's business). The directory is made
// under a temporary name that carries the owner too, then renamed, so
// that a recovery running beside it never takes it for a dead process's,
// and one left by a crash mid-way is recognised.
func (r *Runner) makeRuntimeDir(jobID string) (string, error) {
	dir, err := r.makeOwnedDir(filepath.Join(r.cfg.RuntimeDir, "jobs"), jobID, runtimeSubdir, 0o755)
	if err != nil {
		return "", fmt.Errorf("creating runtime directory for job %s: %w", jobID, err)
	}
	return filepath.Join(dir, runtimeSubdir), nil
}

// makeOwnedDir creates base/<runner>-<job> holding the owner file and an
// empty subdirectory sub (mode perm). It is made under a temporary name
// that carries the owner, then renamed, so that a recovery running beside
// it never takes it for a dead process's, and one a crash left mid-way is
// recognised. An existing directory of that name is refused.
func (r *Runner) makeOwnedDir(base, jobID, sub string, perm os.FileMode) (string, error) {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(base, partialPrefix+r.owner.String()+"-")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(base, r.cfg.RunnerID+"-"+jobID)
	err = errors.Join(
		os.WriteFile(filepath.Join(tmp, ownerFile), []byte(r.owner.String()+"\n"), 0o444),
		os.Mkdir(filepath.Join(tmp, sub), perm),
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
		return "", err
	}
	return dir, nil
}

// runtimeSubdir is the part of a job's runtime directory the job sees.
const runtimeSubdir = "run"

// removeRuntimeDir removes what makeRuntimeDir made (given what it
// returned).
func removeRuntimeDir(dir string) error {
	if filepath.Base(dir) != runtimeSubdir {
		return fmt.Errorf("removing runtime directory %s: not a job's runtime directory", dir)
	}
	return os.RemoveAll(filepath.Dir(dir))
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
		"CI_PROJECT_DIR=" + e.workDir(),
		"CI_BUILDS_DIR=" + e.r.cfg.WorkDir,
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

// registryAuth are the job's registry credentials, for the executor.
func (e *execution) registryAuth() []executors.RegistryAuth { return registryAuth(e.j) }

// registryAuth are j's registry credentials, as executors take them.
func registryAuth(j *job.Job) []executors.RegistryAuth {
	var out []executors.RegistryAuth
	for _, a := range j.RegistryAuth {
		out = append(out, executors.RegistryAuth(a))
	}
	return out
}
