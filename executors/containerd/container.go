package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
)

// Container is a job's containerd container and task.
type Container struct {
	e     *Executor
	id    string
	job   string
	netns string // joined namespace ("" = one of its own)
	user  string // Spec.User, resolved in the container's process
	image string // the digest of the image's target it was made from
	ctr   containerd.Container
	task  containerd.Task
	pid   int // host pid of the idle entrypoint
	pidfd int // a pidfd of it (-1: none), immune to pid reuse
	execs atomic.Int64

	exited <-chan containerd.ExitStatus
	step   *stepd.Client // the task's init when it is the step server

	mu      sync.Mutex
	removed bool
	spec    *specs.Process // the container's process, template of every exec
}

var (
	_ executors.Container     = (*Container)(nil)
	_ executors.Uploader      = (*Container)(nil)
	_ executors.ImageReporter = (*Container)(nil)
	_ executors.Liveness      = (*Container)(nil)

	_ executors.ImageCommander = (*Container)(nil)
)

// Alive implements executors.Liveness: the task's init (the idle
// entrypoint) still runs, by its pidfd (true without one: cannot tell).
func (c *Container) Alive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.removed && executors.PidfdAlive(c.pidfd)
}

// ID implements executors.Container.
func (c *Container) ID() string { return c.id }

// ImageID implements executors.ImageReporter.
func (c *Container) ImageID() string { return c.image }

// ImageCommand implements executors.ImageCommander: the configuration of
// the image the container's record names.
func (c *Container) ImageCommand(ctx context.Context) (executors.ImageCommand, error) {
	ctx = c.e.ctx(ctx)
	img, err := c.ctr.Image(ctx)
	if err != nil {
		return executors.ImageCommand{}, fmt.Errorf("reading the image of job %s: %w", c.job, err)
	}
	ociImg, err := img.Spec(ctx)
	if err != nil {
		return executors.ImageCommand{}, fmt.Errorf("reading the image of job %s: %w", c.job, err)
	}
	return executors.ImageCommand{Entrypoint: ociImg.Config.Entrypoint, Cmd: ociImg.Config.Cmd}, nil
}

// NetNS implements executors.Container: the joined namespace, or the
// task's own.
func (c *Container) NetNS() string {
	if c.netns != "" {
		return c.netns
	}
	return fmt.Sprintf("/proc/%d/ns/net", c.pid)
}

// Pid is the host pid of the task's init (the idle entrypoint).
func (c *Container) Pid() int { return c.pid }

func (c *Container) process(ctx context.Context) (specs.Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return specs.Process{}, fmt.Errorf("job %s: container removed", c.job)
	}
	if c.spec == nil {
		s, err := c.ctr.Spec(ctx)
		if err != nil {
			return specs.Process{}, fmt.Errorf("reading spec of job %s: %w", c.job, err)
		}
		c.spec = s.Process
	}
	p := *c.spec
	p.Env = append([]string(nil), c.spec.Env...)
	return p, nil
}

// Exec implements executors.Container. A command as the container's user
// runs through the step server when the task's init is one; another
// user's is a task exec (the server cannot switch users).
func (c *Container) Exec(ctx context.Context, x executors.Exec) (int, error) {
	ctx = c.e.ctx(ctx)
	var code int
	var err error
	if c.step != nil && (x.User == "" || x.User == c.user) {
		code, err = c.step.Exec(ctx, x, c.e.cfg.Grace, func(grace time.Duration) error {
			return c.stopProcesses(context.WithoutCancel(ctx), grace)
		})
	} else {
		code, err = c.taskExec(ctx, x)
	}
	return code, executors.ContainerStopped(ctx, err, &c.mu, &c.pidfd)
}

// taskExec runs x as an exec of the task.
func (c *Container) taskExec(ctx context.Context, x executors.Exec) (int, error) {
	p, err := c.process(ctx)
	if err != nil {
		return -1, err
	}
	p.Args = x.Cmd
	p.Terminal = false
	p.Env = append(p.Env, x.Env...)
	if x.WorkDir != "" {
		p.Cwd = x.WorkDir
	}
	if x.User != "" && x.User != c.user {
		u, err := numericUser(x.User, p.User)
		if err != nil {
			return -1, fmt.Errorf("exec in job %s: %w", c.job, err)
		}
		p.User = u
	}
	stdout, stderr := x.Stdout, x.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	// Output is copied by one goroutine per stream; the caller's writers
	// (often one and the same) see one write at a time.
	var mu sync.Mutex
	clock := &stepd.DrainClock{}
	stdout, stderr = &lockedWriter{mu: &mu, w: stdout, clock: clock}, &lockedWriter{mu: &mu, w: stderr, clock: clock}
	var stdin *eofReader
	var in io.Reader
	if x.Stdin != nil {
		stdin = &eofReader{r: x.Stdin, eof: make(chan struct{})}
		in = stdin
	}
	execID := "step-" + strconv.FormatInt(c.execs.Add(1), 10)
	proc, err := c.task.Exec(ctx, execID, &p, cio.NewCreator(cio.WithStreams(in, stdout, stderr)))
	if err != nil {
		return -1, fmt.Errorf("creating exec in job %s: %w", c.job, err)
	}
	bg := context.WithoutCancel(ctx)
	defer func() {
		dctx, cancel := context.WithTimeout(bg, 30*time.Second)
		defer cancel()
		if _, err := proc.Delete(dctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			c.e.log.Warn("deleting exec", "job", c.job, "exec", execID, "error", err)
		}
	}()
	statusC, err := proc.Wait(bg)
	if err != nil {
		return -1, fmt.Errorf("waiting for exec in job %s: %w", c.job, err)
	}
	// Started whatever ctx does: a Start cancelled mid-call may have
	// started the command anyway, and then it must be stopped like any.
	sctx, cancel := context.WithTimeout(bg, 30*time.Second)
	err = proc.Start(sctx)
	cancel()
	if err != nil {
		return -1, errors.Join(fmt.Errorf("starting exec in job %s: %w", c.job, err), c.stopProcesses(bg, 0))
	}
	if stdin != nil {
		go func() {
			select {
			case <-stdin.eof:
				_ = proc.CloseIO(bg, containerd.WithStdinCloser)
			case <-statusC:
			}
		}()
	}

	var st containerd.ExitStatus
	select {
	case st = <-statusC:
	case <-ctx.Done():
		grace := x.Grace
		if grace == 0 {
			grace = c.e.cfg.Grace
		}
		killErr := c.stopProcesses(bg, grace)
		if _, ok := waitExit(statusC, 10*time.Second); !ok {
			killErr = errors.Join(killErr, fmt.Errorf("exec %s of job %s did not exit after SIGKILL", execID, c.job))
		}
		c.drain(proc, nil)
		return -1, errors.Join(context.Cause(ctx), killErr)
	}
	c.drain(proc, clock)
	code, _, err := st.Result()
	if err != nil {
		return -1, fmt.Errorf("exec in job %s: %w", c.job, err)
	}
	return int(code), nil
}

// drain waits until the exec's output has been copied, for at most
// stepd.Drain on clock (time spent writing to a slow reader does not
// count); with no clock, for at most stepd.Drain.
func (c *Container) drain(proc containerd.Process, clock *stepd.DrainClock) {
	done := make(chan struct{})
	go func() {
		proc.IO().Wait()
		close(done)
	}()
	if clock == nil {
		clock = &stepd.DrainClock{}
	}
	clock.Start()
	if clock.Expired(done, stepd.Drain) {
		proc.IO().Cancel()
		<-done
	}
}

type lockedWriter struct {
	mu    *sync.Mutex
	w     io.Writer
	clock *stepd.DrainClock
}

func (l *lockedWriter) Write(b []byte) (n int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	err = l.clock.Timed(func() error {
		n, err = l.w.Write(b)
		return err
	})
	return n, err
}

// eofReader closes eof when its reader is exhausted, so that the exec's
// stdin can be closed in the shim, which keeps it open until told.
// errReader keeps the error other than io.EOF its reader returned.
type errReader struct {
	r   io.Reader
	err error
}

func (r *errReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if err != nil && !errors.Is(err, io.EOF) && r.err == nil {
		r.err = err
	}
	return n, err
}

type eofReader struct {
	r    io.Reader
	eof  chan struct{}
	once sync.Once
}

func (r *eofReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if err != nil {
		r.once.Do(func() { close(r.eof) })
	}
	return n, err
}

// numericUser parses "uid[:gid]" for an exec; the container's user
// (Spec.User, resolved from the image when the container was made) is the
// only name accepted.
func numericUser(s string, cur specs.User) (specs.User, error) {
	uidS, gidS, hasGid := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(uidS, 10, 32)
	if err != nil {
		return cur, fmt.Errorf("user %q: an exec takes the container's user or a numeric uid[:gid]", s)
	}
	u := specs.User{UID: uint32(uid), GID: uint32(uid)}
	if hasGid {
		gid, err := strconv.ParseUint(gidS, 10, 32)
		if err != nil {
			return cur, fmt.Errorf("user %q: group must be numeric", s)
		}
		u.GID = uint32(gid)
	}
	if u.UID == cur.UID && u.GID == cur.GID {
		u.AdditionalGids = cur.AdditionalGids
	}
	return u, nil
}

// jobPids returns the host pids of the job's processes: every process of
// the task but its init.
func (c *Container) jobPids(ctx context.Context) ([]int, error) {
	pids, err := c.taskPids(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing processes of job %s: %w", c.job, err)
	}
	var out []int
	for _, pid := range pids {
		if pid == c.pid || pid == 0 {
			continue
		}
		// The idle entrypoint's sleep is in init's process group. Every
		// exec starts a session of its own, and a process can only join
		// a group of its own session, so no job process can hide there.
		pgrp, state, err := statOf(pid)
		if err != nil || state == "Z" || state == "X" || pgrp == c.pid {
			continue // gone meanwhile, a zombie, or the idle entrypoint's
		}
		out = append(out, pid)
	}
	return out, nil
}

// taskPids lists every process of the task: from its pids cgroup, which
// the kernel keeps exact and which costs no round trip to the shim (that
// runs `runc ps`), else from the shim.
func (c *Container) taskPids(ctx context.Context) ([]int, error) {
	if b, err := os.ReadFile(c.e.procsFile(c.id)); err == nil {
		var out []int
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
		return out, nil
	}
	ps, err := c.task.Pids(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(ps))
	for _, p := range ps {
		out = append(out, int(p.Pid))
	}
	return out, nil
}

// statOf returns a process's process group and state letter.
func statOf(pid int) (int, string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", err
	}
	// The command name may contain spaces and parentheses: fields start
	// after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if i < 0 || len(f) < 3 {
		return 0, "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	pgrp, err := strconv.Atoi(f[2])
	return pgrp, f[0], err
}

// stopProcesses sends SIGTERM to every process of the job, then SIGKILL
// to those left after grace, and waits (bounded) until they are gone.
func (c *Container) stopProcesses(ctx context.Context, grace time.Duration) error {
	pids, err := c.jobPids(ctx)
	c.e.log.Trace("stopping job processes", "job", c.job, "pids", fmt.Sprint(pids), "error", err)
	if err != nil || len(pids) == 0 {
		return err
	}
	signal(pids, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if pids, err = c.jobPids(ctx); err != nil || len(pids) == 0 {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if pids, err = c.jobPids(ctx); err != nil || len(pids) == 0 {
			return err
		}
		signal(pids, syscall.SIGKILL)
	}
	return fmt.Errorf("job %s: %d processes left after SIGKILL", c.job, len(pids))
}

func signal(pids []int, sig syscall.Signal) {
	for _, p := range pids {
		_ = syscall.Kill(p, sig)
	}
}

// Destroy implements executors.Container: SIGTERM to the job's processes,
// grace, SIGKILL to every process of the task, then the task, the
// container, its snapshot and its cgroups are removed.
func (c *Container) Destroy(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	ctx = c.e.ctx(ctx)
	var errs []error
	t0 := time.Now()
	if c.task != nil {
		if pids, _ := c.jobPids(ctx); len(pids) > 0 {
			errs = append(errs, c.stopProcesses(ctx, c.e.cfg.Grace))
		}
		errs = append(errs, c.e.endTaskFd(ctx, c.task, c.exited, c.pidfd))
		c.closePidfd()
	}
	t1 := time.Now()
	if len(errs) == 0 && c.ctr != nil {
		// The task is gone: the container and its snapshot go in one call.
		err := c.ctr.Delete(ctx, containerd.WithSnapshotCleanup)
		if err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting container %s: %w", c.id, err))
		}
		errs = append(errs, c.e.removeCgroups(c.id))
	} else if err := c.e.remove(ctx, c.id); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.removed = true
	if c.step != nil {
		_ = c.step.Close()
	}
	c.e.log.Debug("container removed", "job", c.job, "container", c.id, "task_took", t1.Sub(t0), "delete_took", time.Since(t1))
	return nil
}

// endTask kills every process of a task and deletes it.
func (e *Executor) endTask(ctx context.Context, task containerd.Task, exited <-chan containerd.ExitStatus) error {
	return e.endTaskFd(ctx, task, exited, -1)
}

// endTaskFd is endTask with a pidfd of the task's init (-1: none): SIGKILL
// to the init of a pid namespace kills every process in it, without the
// round trip through the shim and runc that a kill of all costs.
func (e *Executor) endTaskFd(ctx context.Context, task containerd.Task, exited <-chan containerd.ExitStatus, pidfd int) error {
	if pidfd >= 0 && exited != nil {
		if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err == nil || err == unix.ESRCH {
			if _, ok := waitExit(exited, 10*time.Second); ok {
				t0 := time.Now()
				if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
					return fmt.Errorf("deleting task %s: %w", task.ID(), err)
				}
				e.log.Trace("task ended", "task", task.ID(), "delete", time.Since(t0))
				return nil
			}
		}
	}
	if exited == nil {
		ch, err := task.Wait(ctx)
		if err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("waiting for task %s: %w", task.ID(), err)
		}
		exited = ch
	}
	t0 := time.Now()
	err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll)
	if err != nil && !errdefs.IsNotFound(err) && !isFinished(err) {
		return fmt.Errorf("killing task %s: %w", task.ID(), err)
	}
	t1 := time.Now()
	if err == nil {
		waitExit(exited, 10*time.Second)
	}
	t2 := time.Now()
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("deleting task %s: %w", task.ID(), err)
	}
	e.log.Trace("task ended", "task", task.ID(), "kill", t1.Sub(t0), "exit", t2.Sub(t1), "delete", time.Since(t2))
	return nil
}

func isFinished(err error) bool {
	return err != nil && strings.Contains(err.Error(), "process already finished")
}

// Upload implements executors.Uploader by extracting the stream with the
// image's tar inside the container (as the container's user, without
// restoring owners: the job has no CAP_CHOWN), so that no path of the
// image is ever resolved on the host.
func (c *Container) Upload(ctx context.Context, dir string, tarStream io.Reader) error {
	var out strings.Builder
	in := &errReader{r: tarStream}
	code, err := c.Exec(ctx, executors.Exec{
		Cmd:    []string{"tar", "-x", "-o", "-f", "-", "-C", dir},
		Stdin:  in,
		Stdout: &out,
		Stderr: &out,
	})
	if err == nil && code != 0 {
		err = fmt.Errorf("tar exited with %d: %s", code, strings.TrimSpace(out.String()))
	}
	if err == nil && in.err != nil {
		// The stream broke off: tar may take what it got, ending at an
		// entry, for a whole archive.
		err = fmt.Errorf("reading the files: %w", in.err)
	}
	if err != nil {
		return fmt.Errorf("copying into %s of job %s: %w", dir, c.job, err)
	}
	return nil
}

func (c *Container) closePidfd() {
	if c.pidfd >= 0 {
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
}
