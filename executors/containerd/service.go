package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/oci"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
)

// LabelService marks a service container (its value: the service's name).
const LabelService = "io.airlock.service"

var (
	_ executors.ServiceStarter = (*Container)(nil)
	_ executors.HealthReporter = (*service)(nil)
)

// service is a service container in a job's network namespace.
type service struct {
	e     *Executor
	id    string
	ports []int
	log   *executors.ServiceLog
	task  containerd.Task
	// health runs its health check (nil: it has none).
	health *healthMonitor

	mu      sync.Mutex
	removed bool
}

// StartService implements executors.ServiceStarter: the service's task
// joins the job's network namespace (its firewall and gateway apply),
// with the job container's hardening and limits, its runner and job
// labels (recovery removes it with the job's), its image's own
// environment, user and working directory, and its entrypoint and command
// as the engine would pick them. Its output is kept in memory (the first
// MiB) for Logs, never on disk. Secret variables reach its process over
// stdin through the step server (exec-env). Its health check (its own
// options over its image's HEALTHCHECK) runs as the engine runs it
// (health.go).
func (c *Container) StartService(ctx context.Context, spec executors.ServiceSpec) (executors.Service, error) {
	e := c.e
	var stdin []byte
	if len(spec.SecretEnv) > 0 {
		if e.stepd == "" {
			return nil, fmt.Errorf("service %s: its variables hold secrets, which Airlock delivers only through its step server, and [containerd] step_server is off", spec.Name)
		}
		var err error
		if stdin, err = stepd.EncodeEnv(spec.SecretEnv); err != nil {
			return nil, fmt.Errorf("service %s: %w", spec.Name, err)
		}
	}
	ctx = e.ctx(ctx)
	jobLabels, err := c.ctr.Labels(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the labels of job %s: %w", c.job, err)
	}
	runner := jobLabels[executors.LabelRunner]
	lctx, doneLease, err := e.withLease(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = doneLease(context.WithoutCancel(ctx)) }()
	img, err := e.image(lctx, spec.Image, spec.Pull, spec.RegistryAuth)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", spec.Name, err)
	}
	ociImg, err := img.Spec(lctx)
	if err != nil {
		return nil, fmt.Errorf("service %s: reading image %s: %w", spec.Name, spec.Image, err)
	}
	var ports []int
	for p := range ociImg.Config.ExposedPorts {
		num, proto, _ := strings.Cut(p, "/")
		if n, err := strconv.Atoi(num); err == nil && (proto == "" || proto == "tcp") {
			ports = append(ports, n)
		}
	}
	sort.Ints(ports)
	imgHealth, err := imageHealth(lctx, img)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", spec.Name, err)
	}
	hc, err := effectiveHealth(imgHealth, spec.Health)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", spec.Name, err)
	}
	argv := executors.ServiceArgv(spec, ociImg.Config.Entrypoint, ociImg.Config.Cmd)
	if len(argv) == 0 {
		return nil, fmt.Errorf("service %s: neither it nor its image %s names a command", spec.Name, spec.Image)
	}
	if stdin != nil {
		argv = append([]string{stepd.Target, stepd.ExecEnvArg}, argv...)
	}

	labels := executors.ChildLabels(spec.Labels, jobLabels, LabelService, spec.Name)
	id := IDPrefix(runner) + idPart(c.job+"/service/"+spec.Name, 40)
	// The job container's hardening, in its namespace; the image's own
	// working directory and no work dir of the job's.
	opts := e.specOpts(img, executors.Spec{Image: spec.Image, Limits: spec.Limits, Mounts: spec.Mounts, NetNS: c.NetNS()})
	opts = append(opts, oci.WithProcessArgs(argv...), oci.WithEnv(spec.Env))
	ctr, err := e.cli.NewContainer(lctx, id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(e.cfg.Snapshotter),
		containerd.WithNewSnapshot(id, img),
		containerd.WithRuntime(e.cfg.Runtime, nil),
		containerd.WithContainerLabels(labels),
		containerd.WithNewSpec(opts...),
	)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("creating service %s for job %s: %w", spec.Name, c.job, err), e.remove(context.WithoutCancel(ctx), id))
	}
	s := &service{e: e, id: id, ports: ports, log: &executors.ServiceLog{}}
	fail := func(err error) (executors.Service, error) {
		return nil, errors.Join(fmt.Errorf("starting service %s for job %s: %w", spec.Name, c.job, err), s.Destroy(context.WithoutCancel(ctx)))
	}
	in := &eofReader{r: bytes.NewReader(stdin), eof: make(chan struct{})}
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(in, s.log, s.log)))
	if err != nil {
		return fail(err)
	}
	s.task = task
	if err := task.Start(ctx); err != nil {
		return fail(err)
	}
	// The shim keeps the stdin FIFO open: once the variables are written
	// the process gets its EOF only when containerd is told.
	select {
	case <-in.eof:
	case <-time.After(30 * time.Second):
		return fail(errors.New("its variables were not read within 30s"))
	}
	if err := task.CloseIO(ctx, containerd.WithStdinCloser); err != nil {
		return fail(fmt.Errorf("closing its stdin: %w", err))
	}
	if hc != nil {
		startHealth(ctx, e, s, hc)
	}
	e.log.Debug("service started", "job", c.job, "service", spec.Name, "container", id, "health_check", hc != nil)
	return s, nil
}

func (s *service) ID() string   { return s.id }
func (s *service) Ports() []int { return append([]int(nil), s.ports...) }

// Logs implements executors.Service.
func (s *service) Logs(ctx context.Context, w io.Writer, follow bool) error {
	return s.log.CopyTo(ctx, w, follow)
}

// Destroy implements executors.Service: the task is killed and the
// container, its snapshot and cgroups removed.
func (s *service) Destroy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	s.stopHealth()
	if err := s.e.remove(ctx, s.id); err != nil {
		return err
	}
	s.removed = true
	s.log.Close()
	return nil
}
