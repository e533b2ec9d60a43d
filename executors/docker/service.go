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

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/airlock-ci/airlock/executors"
)

// LabelService marks a service container (its value: the service's name).
const LabelService = "io.airlock.service"

// service is a service container in a job's network namespace.
type service struct {
	e     *Executor
	id    string
	job   string
	ports []int

	mu      sync.Mutex
	removed bool
}

// StartService implements executors.ServiceStarter: the service joins the
// job container's network namespace (NetworkMode container:ID), so the
// job's firewall and gateway apply to it, with the job container's
// hardening (no capabilities, no-new-privileges, limits, no restart).
func (c *Container) StartService(ctx context.Context, spec executors.ServiceSpec) (executors.Service, error) {
	e := c.e
	pull := spec.Pull
	if pull == "" {
		pull = e.pull
	}
	if err := e.ensureImage(ctx, spec.Image, pull); err != nil {
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

	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	jobLabels := map[string]string{executors.LabelJob: c.job}
	info, err := e.cli.ContainerInspect(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("inspecting container of job %s: %w", c.job, err)
	}
	for k, v := range info.Config.Labels {
		if k == executors.LabelRunner || k == executors.LabelJob || strings.HasPrefix(k, "io.airlock.") {
			jobLabels[k] = v
		}
	}
	for k, v := range jobLabels {
		labels[k] = v
	}
	labels[LabelService] = spec.Name

	lim := e.limits(spec.Limits)
	hc := e.hardened(container.NetworkMode("container:"+c.id), lim, spec.Mounts)
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
	name := "airlock-" + labels[executors.LabelRunner] + "-" + c.job + "-svc-" + sanitizeName(spec.Name)
	resp, err := e.cli.ContainerCreate(ctx, cfg, hc, nil, nil, name)
	if err != nil {
		err = fmt.Errorf("creating service %s for job %s: %w", spec.Name, c.job, err)
		if ctx.Err() != nil {
			err = errors.Join(err, e.Remove(context.WithoutCancel(ctx), name))
		}
		return nil, err
	}
	s := &service{e: e, id: resp.ID, job: c.job, ports: ports}
	if err := e.cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return nil, errors.Join(fmt.Errorf("starting service %s for job %s: %w", spec.Name, c.job, err), s.Destroy(context.WithoutCancel(ctx)))
	}
	e.log.Debug("service started", "job", c.job, "service", spec.Name, "container", shortID(resp.ID))
	return s, nil
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

// Logs implements executors.Service.
func (s *service) Logs(ctx context.Context, w io.Writer, follow bool) error {
	rc, err := s.e.cli.ContainerLogs(ctx, s.id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: follow})
	if err != nil {
		return fmt.Errorf("reading service logs: %w", err)
	}
	defer rc.Close()
	_, err = stdcopy.StdCopy(w, w, rc)
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
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
	return nil
}
