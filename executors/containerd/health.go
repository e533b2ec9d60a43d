package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/airlock-ci/airlock/executors"
)

// Docker's health check defaults (a zero field of HEALTHCHECK).
const (
	healthInterval = 30 * time.Second
	healthTimeout  = 30 * time.Second
	healthRetries  = 3
)

// healthCheck is a service's effective health check.
type healthCheck struct {
	argv                           []string
	interval, timeout, startPeriod time.Duration
	retries                        int
}

// imageHealth reads the image's HEALTHCHECK: Docker keeps it in the image
// configuration beside the OCI fields (config.Healthcheck, durations in
// nanoseconds), which an image imported from Docker or pulled from a
// registry carries; nil when it has none.
func imageHealth(ctx context.Context, img containerd.Image) (*executors.HealthCheck, error) {
	desc, err := img.Config(ctx)
	if err != nil {
		return nil, err
	}
	b, err := content.ReadBlob(ctx, img.ContentStore(), desc)
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Config struct {
			Healthcheck *struct {
				Test                           []string
				Interval, Timeout, StartPeriod time.Duration
				Retries                        int
			}
		} `json:"config"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("reading the configuration of image %s: %w", img.Name(), err)
	}
	h := cfg.Config.Healthcheck
	if h == nil {
		return nil, nil
	}
	return &executors.HealthCheck{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}, nil
}

// effectiveHealth merges the service's health options over the image's
// check as the engine does (an empty or zero field keeps the image's),
// then applies Docker's defaults; nil when there is no check or it is
// switched off (["NONE"]).
func effectiveHealth(img, opt *executors.HealthCheck) (*healthCheck, error) {
	var h executors.HealthCheck
	if img != nil {
		h = *img
	}
	if opt != nil {
		if len(opt.Test) > 0 {
			h.Test = opt.Test
		}
		if opt.Interval != 0 {
			h.Interval = opt.Interval
		}
		if opt.Timeout != 0 {
			h.Timeout = opt.Timeout
		}
		if opt.StartPeriod != 0 {
			h.StartPeriod = opt.StartPeriod
		}
		if opt.Retries != 0 {
			h.Retries = opt.Retries
		}
	}
	if len(h.Test) == 0 || h.Test[0] == "NONE" {
		return nil, nil
	}
	hc := &healthCheck{interval: h.Interval, timeout: h.Timeout, startPeriod: h.StartPeriod, retries: h.Retries}
	switch h.Test[0] {
	case "CMD":
		hc.argv = h.Test[1:]
	case "CMD-SHELL":
		if len(h.Test) != 2 {
			return nil, fmt.Errorf("health check %q: CMD-SHELL takes one command", h.Test)
		}
		hc.argv = []string{"/bin/sh", "-c", h.Test[1]}
	default:
		return nil, fmt.Errorf("health check %q: the test must start with CMD, CMD-SHELL or NONE", h.Test)
	}
	if len(hc.argv) == 0 {
		return nil, errors.New("health check: CMD names no command")
	}
	if hc.interval <= 0 {
		hc.interval = healthInterval
	}
	if hc.timeout <= 0 {
		hc.timeout = healthTimeout
	}
	if hc.retries <= 0 {
		hc.retries = healthRetries
	}
	return hc, nil
}

// healthMonitor runs a service's health check in its task the way the
// engine does: every interval a probe (an exec of the check's command
// with the service's own process settings), killed after timeout; a pass
// makes it healthy, retries failures in a row unhealthy, and failures
// within the start period do not count.
type healthMonitor struct {
	hc      *healthCheck
	task    containerd.Task
	service string
	process *specs.Process // the task's, template of every probe

	mu     sync.Mutex
	status string
	streak int

	stop context.CancelFunc
	done chan struct{}
}

func startHealth(ctx context.Context, e *Executor, s *service, hc *healthCheck) {
	mctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	m := &healthMonitor{hc: hc, task: s.task, service: s.id, status: executors.HealthStarting, stop: stop, done: make(chan struct{})}
	s.health = m
	go func() {
		defer close(m.done)
		m.run(mctx, e)
	}()
}

func (m *healthMonitor) run(ctx context.Context, e *Executor) {
	started := time.Now()
	t := time.NewTicker(m.hc.interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := m.probe(ctx, "health-"+strconv.Itoa(n))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.log.Debug("health probe failed to run", "service", m.service, "error", err)
		}
		m.mu.Lock()
		switch {
		case ok:
			m.status, m.streak = executors.HealthHealthy, 0
		case time.Since(started) < m.hc.startPeriod:
			// Not counted while the service starts.
		default:
			m.streak++
			if m.streak >= m.hc.retries {
				m.status = executors.HealthUnhealthy
			}
		}
		m.mu.Unlock()
	}
}

// probe runs the check once; ok when it exited 0 within the timeout.
func (m *healthMonitor) probe(ctx context.Context, id string) (bool, error) {
	if m.process == nil {
		spec, err := m.task.Spec(ctx)
		if err != nil {
			return false, err
		}
		m.process = spec.Process
	}
	p := *m.process
	p.Args, p.Terminal = m.hc.argv, false
	proc, err := m.task.Exec(ctx, id, &p, cio.NullIO)
	if err != nil {
		return false, err
	}
	bg := context.WithoutCancel(ctx)
	defer func() {
		dctx, cancel := context.WithTimeout(bg, 10*time.Second)
		defer cancel()
		_, _ = proc.Delete(dctx, containerd.WithProcessKill)
	}()
	statusC, err := proc.Wait(bg)
	if err != nil {
		return false, err
	}
	if err := proc.Start(ctx); err != nil {
		return false, err
	}
	timer := time.NewTimer(m.hc.timeout)
	defer timer.Stop()
	select {
	case st := <-statusC:
		return st.ExitCode() == 0, st.Error()
	case <-timer.C:
		_ = proc.Kill(bg, syscall.SIGKILL)
		return false, fmt.Errorf("timed out after %s", m.hc.timeout)
	case <-ctx.Done():
		_ = proc.Kill(bg, syscall.SIGKILL)
		return false, ctx.Err()
	}
}

// Health implements executors.HealthReporter: the state of the service's
// health check (its own or its image's), or exited when its task is not
// running.
func (s *service) Health(ctx context.Context) (string, error) {
	m := s.health
	if m == nil {
		return executors.HealthNone, nil
	}
	st, err := m.task.Status(s.e.ctx(ctx))
	switch {
	case errdefs.IsNotFound(err):
		return executors.HealthExited, nil
	case err != nil:
		return "", fmt.Errorf("service task status: %w", err)
	case st.Status != containerd.Running:
		return executors.HealthExited, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status, nil
}

// stopHealth ends the monitor and waits for its probe.
func (s *service) stopHealth() {
	if m := s.health; m != nil {
		m.stop()
		<-m.done
	}
}
