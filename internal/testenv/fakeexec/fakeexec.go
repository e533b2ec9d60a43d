// Package fakeexec is an executors.Executor that runs no container: it
// interprets the job itself (the idea of woodpecker's dummy backend), so
// that the runner's step, timeout, cancel and teardown logic is tested in
// milliseconds without Docker. The Docker tests stay for the engine's
// properties.
//
// What a job does is driven by the job:
//
//   - its image: "fake:missing" makes Create fail with
//     executors.ErrImageNotFound, "fake:create-error" with another error,
//     "fake:destroy-error" makes the first Destroy fail (the second
//     succeeds);
//   - its step scripts, one command per line, with $VAR and ${VAR}
//     expanded from the Exec environment (the job's variables):
//     echo WORDS (stdout), warn WORDS (stderr), exit N, true, false,
//     sleep DURATION (Go syntax or seconds; cut short by ctx), hang (until
//     ctx ends), trap-term (on ctx end, take the whole grace period before
//     stopping, as a process ignoring SIGTERM), exec-error MESSAGE (Exec
//     fails as a runtime would), require KEY=VALUE (exit 1 unless the
//     variable has that value), ls PATH (the entries of the host directory
//     mounted at PATH). Lines of the runner's step wrapper (set -e, the
//     printf that echoes each command) are understood. Unknown commands
//     exit 127, like a shell.
//
// The first failing command ends the step with its code (set -e).
package fakeexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/airlock-ci/airlock/executors"
)

// Executor creates fake containers and remembers them.
type Executor struct {
	mu         sync.Mutex
	containers []*Container
	creates    int
}

var _ executors.Executor = (*Executor)(nil)

// New returns an empty fake executor.
func New() *Executor { return &Executor{} }

// Create implements executors.Executor.
func (e *Executor) Create(ctx context.Context, spec executors.Spec) (executors.Container, error) {
	e.mu.Lock()
	e.creates++
	e.mu.Unlock()
	if spec.RunnerID == "" || spec.JobID == "" {
		return nil, errors.New("creating container: runner id and job id are required")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("creating container for job %s: %w", spec.JobID, context.Cause(ctx))
	}
	switch spec.Image {
	case "fake:missing":
		return nil, fmt.Errorf("image %s: %w locally and the pull policy is \"never\"", spec.Image, executors.ErrImageNotFound)
	case "fake:create-error":
		return nil, fmt.Errorf("creating container for job %s: the fake engine refused", spec.JobID)
	}
	c := &Container{spec: spec, id: fmt.Sprintf("fake-%s-%s", spec.RunnerID, spec.JobID), failDestroy: spec.Image == "fake:destroy-error"}
	e.mu.Lock()
	e.containers = append(e.containers, c)
	e.mu.Unlock()
	return c, nil
}

// Creates is how many times Create was called.
func (e *Executor) Creates() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.creates
}

// Containers returns every container Create made, in order.
func (e *Executor) Containers() []*Container {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*Container(nil), e.containers...)
}

// Leftovers implements executors.Reaper: containers not destroyed.
func (e *Executor) Leftovers(_ context.Context, runnerID string) ([]executors.Leftover, error) {
	var out []executors.Leftover
	for _, c := range e.Containers() {
		if c.spec.RunnerID == runnerID && !c.Destroyed() {
			out = append(out, executors.Leftover{ID: c.id, JobID: c.spec.JobID, Labels: map[string]string{
				executors.LabelRunner: c.spec.RunnerID, executors.LabelJob: c.spec.JobID}})
		}
	}
	return out, nil
}

// RemoveLeftover implements executors.Reaper.
func (e *Executor) RemoveLeftover(ctx context.Context, l executors.Leftover) error {
	for _, c := range e.Containers() {
		if c.id == l.ID {
			c.mu.Lock()
			c.destroyed = true
			c.mu.Unlock()
		}
	}
	return nil
}

// Container is a fake job container.
type Container struct {
	spec        executors.Spec
	id          string
	failDestroy bool

	mu        sync.Mutex
	execs     []executors.Exec
	running   int
	destroys  int
	destroyed bool
	stopped   []string // how each cut-short Exec ended: "term", "kill"
}

var _ executors.Container = (*Container)(nil)

// ID implements executors.Container.
func (c *Container) ID() string { return c.id }

// NetNS implements executors.Container: the fake has no namespace.
func (c *Container) NetNS() string { return "" }

// Spec is what the container was created with.
func (c *Container) Spec() executors.Spec { return c.spec }

// Execs returns the Execs run so far (their Stdin consumed).
func (c *Container) Execs() []executors.Exec {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]executors.Exec(nil), c.execs...)
}

// Destroys counts Destroy calls; Destroyed says whether one succeeded.
func (c *Container) Destroys() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.destroys
}

// Destroyed reports whether the container was removed.
func (c *Container) Destroyed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.destroyed
}

// Running is the number of Execs still running.
func (c *Container) Running() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// Stopped lists how each Exec cut short by its ctx ended: "term" (it
// stopped on SIGTERM) or "kill" (after the grace period).
func (c *Container) Stopped() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.stopped...)
}

// Destroy implements executors.Container.
func (c *Container) Destroy(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.destroys++
	if c.destroyed {
		return nil
	}
	if c.failDestroy && c.destroys == 1 {
		return fmt.Errorf("removing container %s: the fake engine failed", c.id)
	}
	c.destroyed = true
	return nil
}

// Exec implements executors.Container.
func (c *Container) Exec(ctx context.Context, x executors.Exec) (int, error) {
	c.mu.Lock()
	if c.destroyed {
		c.mu.Unlock()
		return -1, fmt.Errorf("exec in job %s: container %s is gone", c.spec.JobID, c.id)
	}
	c.execs = append(c.execs, x)
	c.running++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running--
		c.mu.Unlock()
	}()

	var script []string
	if x.Stdin != nil {
		b, err := io.ReadAll(x.Stdin)
		if err != nil {
			return -1, fmt.Errorf("reading stdin: %w", err)
		}
		script = strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	}
	stdout, stderr := orDiscard(x.Stdout), orDiscard(x.Stderr)
	env := map[string]string{}
	for _, kv := range x.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	r := &run{c: c, ctx: ctx, x: x, env: env, stdout: stdout, stderr: stderr}
	for _, line := range script {
		code, err := r.line(line)
		if err != nil || code != 0 {
			return code, err
		}
	}
	return 0, nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

type run struct {
	c              *Container
	ctx            context.Context
	x              executors.Exec
	env            map[string]string
	stdout, stderr io.Writer
	trapTerm       bool
}

func (r *run) expand(s string) string {
	return os.Expand(s, func(k string) string { return r.env[k] })
}

func (r *run) line(line string) (int, error) {
	line = strings.TrimSpace(line)
	if line == "" || line == "set -e" || strings.HasPrefix(line, "#") {
		return 0, nil
	}
	if strings.HasPrefix(line, "printf '\\033[32;1m$ %s\\033[0;m\\n' ") {
		arg := strings.TrimPrefix(line, "printf '\\033[32;1m$ %s\\033[0;m\\n' ")
		fmt.Fprintf(r.stdout, "$ %s\n", unquote(arg))
		return 0, nil
	}
	cmd, args, _ := strings.Cut(line, " ")
	args = r.expand(strings.TrimSpace(args))
	switch cmd {
	case "echo":
		fmt.Fprintln(r.stdout, args)
	case "warn":
		fmt.Fprintln(r.stderr, args)
	case "true":
	case "false":
		return 1, nil
	case "exit":
		n, err := strconv.Atoi(args)
		if err != nil {
			return 2, nil
		}
		return n, nil
	case "require":
		k, v, _ := strings.Cut(args, "=")
		if got, ok := r.env[k]; !ok || got != v {
			fmt.Fprintf(r.stderr, "require: %s is %q, want %q\n", k, got, v)
			return 1, nil
		}
	case "exec-error":
		return -1, fmt.Errorf("exec in job %s: %s", r.c.spec.JobID, args)
	case "ls":
		// The entries of the host directory mounted at the path.
		for _, m := range r.c.spec.Mounts {
			if m.Target == args {
				ents, err := os.ReadDir(m.Source)
				if err != nil {
					fmt.Fprintln(r.stderr, err)
					return 1, nil
				}
				for _, e := range ents {
					fmt.Fprintln(r.stdout, e.Name())
				}
				return 0, nil
			}
		}
		fmt.Fprintf(r.stderr, "ls: %s: nothing is mounted there\n", args)
		return 2, nil
	case "trap-term":
		r.trapTerm = true
	case "sleep":
		d, err := time.ParseDuration(args)
		if err != nil {
			s, ferr := strconv.ParseFloat(args, 64)
			if ferr != nil {
				return 1, nil
			}
			d = time.Duration(s * float64(time.Second))
		}
		return r.wait(time.After(d))
	case "hang":
		return r.wait(nil)
	default:
		fmt.Fprintf(r.stderr, "%s: command not found\n", cmd)
		return 127, nil
	}
	return 0, nil
}

// wait blocks until done or ctx ends; then it stops like a process given
// SIGTERM (at once, or after the grace period with trap-term).
func (r *run) wait(done <-chan time.Time) (int, error) {
	select {
	case <-done:
		return 0, nil
	case <-r.ctx.Done():
	}
	how := "term"
	if r.trapTerm {
		how = "kill"
		time.Sleep(r.x.Grace)
	}
	r.c.mu.Lock()
	r.c.stopped = append(r.c.stopped, how)
	r.c.mu.Unlock()
	return -1, context.Cause(r.ctx)
}

// unquote undoes the runner's single-quoting of one shell word.
func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		s = s[1 : len(s)-1]
	}
	return strings.ReplaceAll(s, `'\''`, `'`)
}
