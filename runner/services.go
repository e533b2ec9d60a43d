package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/nsenter"
	"github.com/airlock-ci/airlock/runner/job"
)

// DefaultServiceWait is how long a service's ports get to accept a
// connection before the job is warned (gitlab-runner's
// wait_for_services_timeout).
const DefaultServiceWait = 30 * time.Second

// serviceLogCap bounds the service log shown with a health warning.
const serviceLogCap = 64 << 10

// jobServices are the services running beside one job.
type jobServices struct {
	list   []executors.Service
	names  []string
	cancel context.CancelFunc // stops the log followers
	wg     sync.WaitGroup
}

// writeHosts writes the job's /etc/hosts: every service alias on
// 127.0.0.1, since the services share the job's network namespace.
func (e *execution) writeHosts() (string, error) {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n")
	for _, s := range e.j.Services {
		if len(s.Aliases) > 0 {
			fmt.Fprintf(&b, "127.0.0.1\t%s\n", strings.Join(s.Aliases, " "))
		}
	}
	p := filepath.Join(e.dir, "hosts")
	if err := os.WriteFile(p, []byte(b.String()), 0o444); err != nil {
		return "", fmt.Errorf("writing the job's hosts file: %w", err)
	}
	return p, nil
}

// serviceEnv is a service's environment: the job's public variables
// (never masked ones, file variables or credentials) and its own. Its own
// that are masked, or hold the value of a masked job variable or of a
// private one of 8 bytes or more (a password `$DB_PASSWORD` expanded to),
// are secret: the executor delivers them to the service's process, never
// in its configuration.
func (e *execution) serviceEnv(i int) (public, secret []string) {
	public = []string{"CI=true", "CI_JOB_ID=" + e.j.ID, "CI_PROJECT_DIR=" + e.workDir()}
	for _, v := range e.j.Variables {
		if publicVariable(v) {
			public = append(public, v.Key+"="+v.Value)
		}
	}
	private := privateValues(e.j)
	for _, v := range e.j.Services[i].Variables {
		if v.Masked || slices.ContainsFunc(private, func(p string) bool { return strings.Contains(v.Value, p) }) {
			secret = append(secret, v.Key+"="+v.Value)
			continue
		}
		public = append(public, v.Key+"="+v.Value)
	}
	return public, secret
}

// publicVariable reports whether v may be shown: public, neither masked
// nor a file.
func publicVariable(v job.Variable) bool { return v.Public && !v.Masked && !v.File }

// privateValues are the values of the job's variables that are not public
// and could be secrets: every masked one, and the others of 8 bytes or
// more (shorter ones would match too much by chance).
func privateValues(j *job.Job) []string {
	var out []string
	for _, v := range j.Variables {
		if !publicVariable(v) && ((v.Masked && v.Value != "") || len(v.Value) >= 8) {
			out = append(out, v.Value)
		}
	}
	return out
}

func (e *execution) jobVar(key string) string {
	val := ""
	for _, v := range e.j.Variables {
		if v.Key == key {
			val = v.Value
		}
	}
	return val
}

// startServices starts every service in the job's network namespace,
// then waits for each one's ports (a warning, never a failure, when one
// does not answer).
func (e *execution) startServices(ctx context.Context, mounts []executors.Mount) error {
	st, ok := e.ctr.(executors.ServiceStarter)
	if !ok {
		return errors.New("services: this executor cannot start services")
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.services = &jobServices{cancel: cancel}
	debug := e.jobVar("CI_DEBUG_SERVICES") == "true"
	for i, s := range e.j.Services {
		name := fmt.Sprintf("%s-%d", serviceBase(s.Image), i)
		fmt.Fprintf(e.out, "Starting service %s as %s ...\n", s.Image, strings.Join(s.Aliases, ", "))
		public, secret := e.serviceEnv(i)
		spec := executors.ServiceSpec{
			Name: name, Image: s.Image,
			Entrypoint: s.Entrypoint, Cmd: s.Command,
			Env: public, SecretEnv: secret,
			Labels: map[string]string{labelOwner: e.r.owner.String()},
			Limits: e.r.cfg.Limits.Override(e.r.cfg.ServiceLimits),
			Mounts: mounts,

			RegistryAuth: e.registryAuth(),
		}
		if s.Health != nil {
			h := executors.HealthCheck(*s.Health)
			spec.Health = &h
		}
		var pulls []executors.PullPolicy
		if i < len(e.svcPull) {
			pulls = e.svcPull[i]
		}
		var svc executors.Service
		err := e.withPull(s.Image, pulls, func(p executors.PullPolicy) error {
			spec.Pull = p
			var err error
			svc, err = st.StartService(ctx, spec)
			return err
		})
		if err != nil {
			return fmt.Errorf("starting service %s: %w", s.Image, err)
		}
		e.services.list = append(e.services.list, svc)
		e.services.names = append(e.services.names, s.Image)
		if debug {
			w := &prefixWriter{w: e.out, prefix: "[service:" + name + "] "}
			e.services.wg.Add(1)
			go func() {
				defer e.services.wg.Done()
				_ = svc.Logs(lctx, w, true)
			}()
		}
	}
	checked, err := e.waitHealthy(ctx)
	if err != nil {
		return err
	}
	e.waitServices(ctx, checked)
	return nil
}

// Backoff of waitHealthy between two looks at a starting service.
const (
	healthPollMin = time.Second
	healthPollMax = 8 * time.Second
)

// waitHealthy waits, for every service that asks for it (WaitHealthy)
// and has a health check, until the engine calls it healthy, as GitHub's
// runner does: the job fails when one turns unhealthy or stops. It
// returns which services it checked so.
func (e *execution) waitHealthy(ctx context.Context) ([]bool, error) {
	checked := make([]bool, len(e.services.list))
	errs := make([]error, len(e.services.list))
	var wg sync.WaitGroup
	var outMu sync.Mutex // one service's lines at a time
	say := func(format string, a ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(e.out, format, a...)
	}
	for i, svc := range e.services.list {
		hr, ok := svc.(executors.HealthReporter)
		if !ok || !e.j.Services[i].WaitHealthy {
			continue
		}
		alias := e.services.names[i]
		if a := e.j.Services[i].Aliases; len(a) > 0 {
			alias = a[0]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait := healthPollMin
			for {
				st, err := hr.Health(ctx)
				if err != nil {
					errs[i] = fmt.Errorf("service %s: %w", alias, err)
					return
				}
				switch st {
				case executors.HealthNone:
					return
				case executors.HealthHealthy:
					checked[i] = true
					say("%s service is healthy.\n", alias)
					return
				case executors.HealthStarting:
					say("%s service is starting, waiting %s before checking again.\n", alias, wait)
					select {
					case <-ctx.Done():
						errs[i] = context.Cause(ctx)
						return
					case <-time.After(wait):
					}
					wait = min(2*wait, healthPollMax)
				default:
					checked[i] = true
					errs[i] = fmt.Errorf("failed to initialize, %s service is %s", alias, st)
					outMu.Lock()
					e.showServiceLogs(ctx, i, fmt.Sprintf("\x1b[0;33m*** Service %s is %s. Service container logs:\n", alias, st))
					outMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return checked, errors.Join(errs...)
}

// showServiceLogs writes a heading and the first serviceLogCap bytes of
// service i's logs to the job log.
func (e *execution) showServiceLogs(ctx context.Context, i int, heading string) {
	fmt.Fprint(e.out, heading)
	var buf bytes.Buffer
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_ = e.services.list[i].Logs(lctx, &capWriter{w: &buf, n: serviceLogCap}, false)
	cancel()
	e.out.Write(buf.Bytes())
	fmt.Fprintf(e.out, "\n*********\x1b[0;m\n")
}

// waitServices dials each service's ports from inside the job's network
// namespace, once a second, until one accepts or the wait ends; not
// those whose health check waitHealthy decided (skip).
func (e *execution) waitServices(ctx context.Context, skip []bool) {
	wait := e.r.cfg.ServiceWait
	if wait == 0 {
		wait = DefaultServiceWait
	}
	if wait < 0 {
		return
	}
	var wg sync.WaitGroup
	warnings := make([]string, len(e.services.list))
	for i, svc := range e.services.list {
		if skip[i] {
			continue
		}
		ports := svc.Ports()
		for _, v := range e.j.Services[i].Variables {
			if v.Key == "HEALTHCHECK_TCP_PORT" {
				if p, err := strconv.Atoi(v.Value); err == nil {
					ports = []int{p}
				}
			}
		}
		if len(ports) > 20 {
			ports = ports[:20]
		}
		if len(ports) == 0 {
			warnings[i] = "the image exposes no TCP port, so its health is not checked"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.dialUntil(ctx, ports, wait); err != nil {
				warnings[i] = err.Error()
			}
		}()
	}
	wg.Wait()
	for i, w := range warnings {
		if w == "" {
			continue
		}
		e.showServiceLogs(ctx, i, fmt.Sprintf("\x1b[0;33m*** WARNING: Service %s probably didn't start properly.\n\nHealth check: %s\n\nService container logs:\n", e.services.names[i], w))
	}
}

func (e *execution) dialUntil(ctx context.Context, ports []int, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		for _, p := range ports {
			var ok bool
			err := nsenter.RunPath(e.ctr.NetNS(), true, func() error {
				c, err := net.DialTimeout("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), time.Second)
				if err == nil {
					ok = true
					c.Close()
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("entering the job's network: %v", err)
			}
			if ok {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no connection to port(s) %v within %s", ports, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// stopServices removes the services (before the job container, whose
// network namespace they share).
func (e *execution) stopServices(ctx context.Context) error {
	if e.services == nil {
		return nil
	}
	e.services.cancel()
	var errs []error
	for i, s := range e.services.list {
		if err := s.Destroy(ctx); err != nil {
			errs = append(errs, fmt.Errorf("removing service %s of job %s: %w", e.services.names[i], e.j.ID, err))
		}
	}
	e.services.wg.Wait()
	return errors.Join(errs...)
}

// serviceBase is a short name for a service container from its image.
func serviceBase(image string) string {
	a := image
	if i := strings.LastIndexByte(a, '/'); i >= 0 {
		a = a[i+1:]
	}
	if i := strings.IndexAny(a, ":@"); i >= 0 {
		a = a[:i]
	}
	return a
}

// prefixWriter prefixes every line (service logs in the job log).
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out bytes.Buffer
	for _, c := range b {
		if !p.mid {
			out.WriteString(p.prefix)
			p.mid = true
		}
		out.WriteByte(c)
		if c == '\n' {
			p.mid = false
		}
	}
	if _, err := p.w.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// capWriter keeps the first n bytes.
type capWriter struct {
	w io.Writer
	n int
}

func (c *capWriter) Write(b []byte) (int, error) {
	if c.n <= 0 {
		return len(b), nil
	}
	k := min(len(b), c.n)
	c.n -= k
	_, err := c.w.Write(b[:k])
	return len(b), err
}
