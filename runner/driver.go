package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// A StepDriver runs a coordinator's step semantics in the runner's step
// loop (see package job); RunOptions.Driver sets one for a run.
type (
	StepDriver = job.StepDriver
	StepHost   = job.StepHost
	StepExec   = job.StepExec
	RunStatus  = job.RunStatus
)

// runDriven is runSteps for a job whose steps a StepDriver decides and
// runs. The runner keeps the job's state: a step the driver says fails the
// job fails it; a cancel or timeout of the job makes later steps run only
// when the driver decides so under RunStatus.Canceled, each on a context
// of its own (bounded by DefaultAfterTimeout) that only an abort ends.
func (e *execution) runDriven(ctx, jobCtx context.Context, res *Result) {
	d := e.opts.Driver
	h := &stepHost{e: e}
	if err := d.Begin(jobCtx, h); err != nil {
		res.Err = fmt.Errorf("preparing the job's steps: %w", err)
		fmt.Fprintf(e.out, "\x1b[31;1mPreparing the job's steps failed: %v\x1b[0;m\n", err)
		if jobCtx.Err() != nil {
			e.r.endState(res, ctx, jobCtx)
		}
		return
	}
	failed := false
	fail := func(sr StepResult) {
		if failed {
			return
		}
		failed = true
		switch {
		case sr.Err == nil:
			res.State, res.Reason, res.ExitCode = Failed, ScriptFailure, sr.ExitCode
		case errors.Is(sr.Err, context.DeadlineExceeded) || errors.Is(sr.Err, ErrTimeout):
			res.Err = sr.Err
			res.State, res.Reason = Failed, JobTimeout
		default:
			res.Err = sr.Err
			res.State, res.Reason = Failed, RunnerSystemFailure
		}
		if jobCtx.Err() != nil {
			e.r.endState(res, ctx, jobCtx)
		}
	}
	for i := 0; i < d.Len(); i++ {
		name := d.Name(i)
		st := RunStatus{Failed: failed, Canceled: jobCtx.Err() != nil}
		run := false
		var err error
		if ctx.Err() == nil {
			run, err = d.Decide(ctx, i, st)
		}
		if err != nil {
			// GitHub fails a step whose condition cannot be evaluated.
			fmt.Fprintf(e.out, "\x1b[31;1mstep %s: %v\x1b[0;m\n", name, err)
			sr := StepResult{Name: name, ExitCode: -1, Err: err}
			res.Steps = append(res.Steps, sr)
			fail(StepResult{Name: name, ExitCode: 1})
			continue
		}
		if !run {
			res.Steps = append(res.Steps, StepResult{Name: name, Skipped: true, ExitCode: -1})
			continue
		}
		sr, fails := e.drivenStep(ctx, jobCtx, i, name, st.Canceled, h)
		res.Steps = append(res.Steps, sr)
		if fails {
			fail(sr)
		}
	}
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultAfterTimeout)
	defer cancel()
	if err := d.End(endCtx, RunStatus{Failed: failed, Canceled: jobCtx.Err() != nil}, h); err != nil {
		fmt.Fprintf(e.out, "\x1b[31;1mFinishing the job's steps failed: %v\x1b[0;m\n", err)
		if !failed {
			failed = true
			res.Err, res.State, res.Reason = err, Failed, RunnerSystemFailure
		}
	}
	if jobCtx.Err() != nil && !failed {
		e.r.endState(res, ctx, jobCtx)
		return
	}
	if !failed {
		res.State, res.Reason, res.Err = Success, "", nil
	}
}

// drivenStep runs one driven step with the runner's header, hooks and
// audit records around it.
func (e *execution) drivenStep(ctx, jobCtx context.Context, i int, name string, afterCancel bool, h *stepHost) (StepResult, bool) {
	for _, hk := range e.r.Hooks {
		hk.StepStarted(e.j, name)
	}
	stepCtx := jobCtx
	if afterCancel {
		var cancel context.CancelFunc
		stepCtx, cancel = context.WithTimeoutCause(ctx, DefaultAfterTimeout, ErrTimeout)
		defer cancel()
	}
	fmt.Fprintf(e.out, "\x1b[36;1m>>> step %s\x1b[0;m\n", name)
	e.trail.note(ctx, audit.NewStepStarted(name))
	start := time.Now()
	h.step = name
	sr, fails := e.opts.Driver.Run(stepCtx, i, h)
	sr.Name = name
	if sr.Duration == 0 {
		sr.Duration = time.Since(start)
	}
	if sr.Err != nil {
		// The job's error names the step (a coordinator reports it).
		sr.ExitCode = -1
		sr.Err = fmt.Errorf("step %s: %w", name, sr.Err)
		fmt.Fprintf(e.out, "\x1b[31;1m%v\x1b[0;m\n", sr.Err)
	}
	e.trail.note(ctx, audit.NewStepFinished(name, sr.ExitCode, sr.Duration))
	for _, hk := range e.r.Hooks {
		hk.StepFinished(e.j, sr)
	}
	return sr, fails
}

// stepHost is the StepHost of one execution.
type stepHost struct {
	e    *execution
	step string // the step running now (for its audit records)
}

func (h *stepHost) Exec(ctx context.Context, x StepExec) (int, error) {
	e := h.e
	wd := x.WorkDir
	if wd == "" {
		wd = e.workDir()
	}
	stdout := x.Stdout
	if stdout == nil {
		stdout = e.out
	}
	stderr := x.Stderr
	if stderr == nil {
		stderr = stdout
	}
	return e.ctr.Exec(ctx, executors.Exec{
		Cmd:     x.Cmd,
		Env:     mergeEnv(e.env, x.Env),
		WorkDir: wd,
		User:    e.user(),
		Stdin:   x.Stdin,
		Stdout:  stdout,
		Stderr:  stderr,
		Grace:   e.r.cfg.Grace,
	})
}

func (h *stepHost) Mask(values ...string) int { return h.e.masker.Add(values...) }
func (h *stepHost) Log() io.Writer            { return h.e.out }
func (h *stepHost) Env() []string             { return append([]string(nil), h.e.env...) }
func (h *stepHost) WorkDir() string           { return h.e.workDir() }
func (h *stepHost) RuntimeDir() (string, string) {
	return h.e.dir, containerRunDir
}

// mergeEnv appends extra to base; a later KEY replaces an earlier one.
func mergeEnv(base, extra []string) []string {
	all := append(append([]string(nil), base...), extra...)
	last := map[string]int{}
	for i, kv := range all {
		k, _, _ := strings.Cut(kv, "=")
		last[k] = i
	}
	out := all[:0:0]
	for i, kv := range all {
		k, _, _ := strings.Cut(kv, "=")
		if last[k] == i {
			out = append(out, kv)
		}
	}
	return out
}
