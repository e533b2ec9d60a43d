package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
)

// LabelService marks a service container (its value: the service's name).
const LabelService = "io.airlock.service"

// service is a service container in a job's network namespace.
type service struct {
	e     *Executor
	id    string
	job   string
	ports []int
	// log holds its output, copied from the attach stream (copied is
	// closed when the copy ends): the engine keeps none on disk.
	log    *executors.ServiceLog
	attach *types.HijackedResponse
	copied chan struct{}

	mu      sync.Mutex
	removed bool
}

// StartService implements executors.ServiceStarter: the service joins the
// job container's network namespace (NetworkMode container:ID), so the
// job's firewall and gateway apply to it, with the job container's
// hardening (no capabilities, no-new-privileges, limits, no restart).
// Its output is kept in memory (the first MiB) for Logs and never written
// by the engine (log driver "none"): a service may print what its secret
// variables hold.
func (c *Container) StartService(ctx context.Context, spec executors.ServiceSpec) (executors.Service, error) {
	e := c.e
	if err := e.ensureImage(ctx, spec.Image, spec.Pull, spec.RegistryAuth); err != nil {
		return nil, err
	}
	img, err := e.cli.ImageInspect(ctx, spec.Image)
	if err != nil {
		return nil, fmt.Errorf("inspecting service image %s: %w", spec.Image, err)
	}
	var ports []int
	if img.Config != nil {
		for p := range img.Config.ExposedPorts {
			num, proto, _ := strings.Cut(string(p), "/")
			if n, err := strconv.Atoi(num); err == nil && (proto == "" || proto == "tcp") {
				ports = append(ports, n)
			}
		}
	}
	sort.Ints(ports)

	info, err := e.cli.ContainerInspect(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("inspecting container of job %s: %w", c.job, err)
	}
	labels := executors.ChildLabels(spec.Labels, info.Config.Labels, LabelService, spec.Name)
	labels[executors.LabelJob] = c.job

	lim := e.limits(spec.Limits)
	hc := e.hardened(container.NetworkMode("container:"+c.id), lim, spec.Mounts)
	hc.LogConfig = container.LogConfig{Type: "none"}
	if lim.ReadOnly {
		hc.Tmpfs = map[string]string{"/tmp": "rw,nosuid,nodev,size=1g"}
	}
	cfg := &container.Config{
		Image:      spec.Image,
		Entrypoint: spec.Entrypoint,
		Cmd:        spec.Cmd,
		Env:        spec.Env,
		Labels:     labels,
	}
	if h := spec.Health; h != nil {
		cfg.Healthcheck = &container.HealthConfig{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout,
			StartPeriod: h.StartPeriod, Retries: h.Retries}
	}
	var secretEnv []byte
	if len(spec.SecretEnv) > 0 {
		// The step server reads them from stdin and execs the service's
		// own command: they never enter the configuration.
		if e.stepd == "" {
			return nil, fmt.Errorf("service %s: its variables hold secrets, which Airlock delivers only through its step server, and [docker] step_server is off", spec.Name)
		}
		if secretEnv, err = stepd.EncodeEnv(spec.SecretEnv); err != nil {
			return nil, fmt.Errorf("service %s: %w", spec.Name, err)
		}
		var imgEP, imgCmd []string
		if img.Config != nil {
			imgEP, imgCmd = img.Config.Entrypoint, img.Config.Cmd
		}
		argv := executors.ServiceArgv(spec, imgEP, imgCmd)
		if len(argv) == 0 {
			return nil, fmt.Errorf("service %s: neither it nor its image %s names a command", spec.Name, spec.Image)
		}
		cfg.Entrypoint = []string{stepd.Target, stepd.ExecEnvArg}
		cfg.Cmd = argv
		cfg.AttachStdin, cfg.OpenStdin, cfg.StdinOnce = true, true, true
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: e.stepd, Target: stepd.Target, ReadOnly: true})
	}
	name := "airlock-" + labels[executors.LabelRunner] + "-" + c.job + "-svc-" + sanitizeName(spec.Name)
	resp, err := e.cli.ContainerCreate(ctx, cfg, hc, nil, nil, name)
	if err != nil {
		err = fmt.Errorf("creating service %s for job %s: %w", spec.Name, c.job, err)
		if ctx.Err() != nil {
			err = errors.Join(err, e.Remove(context.WithoutCancel(ctx), name))
		}
		return nil, err
	}
	s := &service{e: e, id: resp.ID, job: c.job, ports: ports, log: &executors.ServiceLog{}}
	if err := s.start(ctx, secretEnv); err != nil {
		return nil, errors.Join(fmt.Errorf("starting service %s for job %s: %w", spec.Name, c.job, err), s.Destroy(context.WithoutCancel(ctx)))
	}
	e.log.Debug("service started", "job", c.job, "service", spec.Name, "container", shortID(resp.ID))
	return s, nil
}

// start attaches to the created service's output (and, with stdin, its
// input, opened once: StdinOnce), starts it, and writes stdin to it and
// closes it, so that the process reads stdin and then EOF. The output is
// copied into s.log until the stream ends.
func (s *service) start(ctx context.Context, stdin []byte) error {
	hj, err := s.e.cli.ContainerAttach(ctx, s.id, container.AttachOptions{Stream: true, Stdout: true, Stderr: true, Stdin: stdin != nil})
	if err != nil {
		return fmt.Errorf("attaching: %w", err)
	}
	s.attach, s.copied = &hj, make(chan struct{})
	go func() {
		defer close(s.copied)
		_, _ = stdcopy.StdCopy(s.log, s.log, hj.Reader)
	}()
	if err := s.e.cli.ContainerStart(ctx, s.id, container.StartOptions{}); err != nil {
		return err
	}
	if stdin == nil {
		return nil
	}
	if _, err := hj.Conn.Write(stdin); err != nil {
		return fmt.Errorf("writing its variables: %w", err)
	}
	if err := hj.CloseWrite(); err != nil {
		return fmt.Errorf("closing its stdin: %w", err)
	}
	return nil
}

func sanitizeName(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '.') {
			b[i] = '_'
		}
	}
	return string(b)
}

func (s *service) ID() string   { return s.id }
func (s *service) Ports() []int { return append([]int(nil), s.ports...) }

// Logs implements executors.Service: what it wrote, from memory.
func (s *service) Logs(ctx context.Context, w io.Writer, follow bool) error {
	return s.log.CopyTo(ctx, w, follow)
}

// Health implements executors.HealthReporter: the engine's state of the
// service's health check (its own or its image's).
func (s *service) Health(ctx context.Context) (string, error) {
	info, err := s.e.cli.ContainerInspect(ctx, s.id)
	if err != nil {
		return "", fmt.Errorf("inspecting service: %w", err)
	}
	switch {
	case info.State == nil || info.State.Health == nil:
		return executors.HealthNone, nil
	case !info.State.Running:
		return executors.HealthExited, nil
	}
	switch st := info.State.Health.Status; st {
	case container.Starting, container.Healthy, container.Unhealthy:
		return st, nil
	default: // "none": the image's check is switched off
		return executors.HealthNone, nil
	}
}

// Destroy implements executors.Service.
func (s *service) Destroy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	if err := s.e.Remove(ctx, s.id); err != nil {
		return err
	}
	s.removed = true
	if s.attach != nil {
		s.attach.Close()
		<-s.copied
	}
	s.log.Close()
	return nil
}
