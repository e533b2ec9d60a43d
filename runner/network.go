package runner

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/sandbox"
)

// Network gives every job a network namespace of its own whose only
// reachable address is its egress gateway, which lets through only what
// the job's effective policy allows.
type Network struct {
	Sandbox *sandbox.Manager
	Gateway *netpolicy.Gateway
	// CA terminates TLS for credential-bound hosts; its certificate (with
	// the host's roots) is the job's trust bundle.
	CA *netpolicy.CA
	// Ceiling returns the admin's egress ceiling for a repository.
	Ceiling func(repo, instance string) (Ceiling, error)
	// SystemRoots is a PEM bundle of the host's trusted roots, added to
	// the job's trust bundle (default /etc/ssl/certs/ca-certificates.crt).
	SystemRoots string

	events eventRouter
}

// Ceiling is the most a repository's jobs may reach.
type Ceiling struct {
	Entries []netpolicy.Entry
	// Audit: every name is let through (still only via the gateway) and
	// recorded, to onboard a repository (`airlock audit suggest-policy`).
	Audit bool
	// Scope names where the ceiling comes from, for error messages.
	Scope string
}

// Emit implements netpolicy.EventSink: it routes gateway events to the
// job they belong to. Pass the Network as the gateway's event sink.
func (n *Network) Emit(e netpolicy.Event) { n.events.emit([]netpolicy.Event{e}) }

// EmitBatch implements netpolicy.BatchSink: a batch is one job's.
func (n *Network) EmitBatch(evs []netpolicy.Event) { n.events.emit(evs) }

// eventRouter sends gateway events to per-job handlers.
type eventRouter struct {
	mu   sync.RWMutex
	jobs map[string]func([]netpolicy.Event)
}

func (r *eventRouter) add(jobID string, fn func([]netpolicy.Event)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.jobs == nil {
		r.jobs = map[string]func([]netpolicy.Event){}
	}
	r.jobs[jobID] = fn
}

func (r *eventRouter) remove(jobID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.jobs, jobID)
}

func (r *eventRouter) emit(evs []netpolicy.Event) {
	if len(evs) == 0 {
		return
	}
	r.mu.RLock()
	fn := r.jobs[evs[0].Job]
	r.mu.RUnlock()
	if fn != nil {
		fn(evs)
	}
}

// policy computes a job's effective egress: what it declared, within the
// admin's ceiling, plus the hosts bound to the credentials it was granted.
// A declared entry outside the ceiling is a *DeniedError.
func (n *Network) policy(j *job.Job) (*netpolicy.Policy, error) {
	declared, err := netpolicy.ParseEntries(j.Egress)
	if err != nil {
		return nil, &DeniedError{Err: fmt.Errorf("egress: %w", err)}
	}
	var c Ceiling
	if n.Ceiling != nil {
		if c, err = n.Ceiling(j.Repo, j.Instance); err != nil {
			return nil, fmt.Errorf("looking up the egress ceiling of %s: %w", j.Repo, err)
		}
	}
	p := &netpolicy.Policy{Audit: c.Audit}
	if c.Audit {
		// Audit mode lets every name through; the declared entries (and
		// the ceiling's CIDR entries) still say which ports.
		p.Allow = append(declared, c.Entries...)
		return p, nil
	}
	allow, err := netpolicy.Intersect(declared, c.Entries)
	if err != nil {
		var ce *netpolicy.CeilingError
		if errors.As(err, &ce) && ce.Scope == "" {
			ce.Scope = c.Scope
		}
		return nil, &DeniedError{Err: err}
	}
	// A CIDR entry in the ceiling is the admin's explicit choice for the
	// repository: its jobs may reach that range on that port, by address
	// or through an allowed name that resolves into it.
	for _, e := range c.Entries {
		if e.IsCIDR() {
			allow = append(allow, e)
		}
	}
	p.Allow = allow
	return p, nil
}

// jobNetwork is one job's plumbed network and gateway registration.
type jobNetwork struct {
	n   *Network
	job string
	sb  *sandbox.Network
	reg *netpolicy.Registration
	// netns is the named namespace made for the job ("" when the
	// executor made the namespace), netnsID the id it was made under:
	// the job's, or the warm sandbox's the job claimed.
	netns, netnsID string
}

// attach plumbs the container's namespace and registers the job's policy
// with the gateway. On error nothing of it is left.
func (n *Network) attach(ctx context.Context, jobID, netns string, p *netpolicy.Policy, mask func(string) string, events func([]netpolicy.Event)) (*jobNetwork, error) {
	sb, err := n.Sandbox.Setup(ctx, jobID, netns)
	if err != nil {
		return nil, err
	}
	return n.register(ctx, jobID, sb, p, mask, events)
}

// register registers the job's policy with the gateway on a plumbed
// sandbox (a fresh one, or a warm one the job claimed). On error the
// sandbox is torn down.
func (n *Network) register(ctx context.Context, jobID string, sb *sandbox.Network, p *netpolicy.Policy, mask func(string) string, events func([]netpolicy.Event)) (*jobNetwork, error) {
	jn := &jobNetwork{n: n, job: jobID, sb: sb}
	if events != nil {
		n.events.add(jobID, events)
	}
	reg, err := n.Gateway.Register(ctx, netpolicy.JobConfig{JobID: jobID, GatewayIP: sb.GatewayIP, JobIP: sb.JobIP, Policy: p, Mask: mask})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("starting the gateway of job %s: %w", jobID, err), jn.close(context.WithoutCancel(ctx)))
	}
	jn.reg = reg
	return jn, nil
}

// attachNew creates the job's named network namespace, plumbs and
// firewalls it and registers the job with the gateway, all before any
// process of the job exists: for executors that start the job in it
// (executors.NamespaceJoiner). close deletes the namespace too.
func (n *Network) attachNew(ctx context.Context, jobID string, p *netpolicy.Policy, mask func(string) string, events func([]netpolicy.Event)) (*jobNetwork, error) {
	path, err := n.Sandbox.CreateNetNS(jobID)
	if err != nil {
		return nil, err
	}
	jn, err := n.attach(ctx, jobID, path, p, mask, events)
	if err != nil {
		return nil, errors.Join(err, n.Sandbox.DeleteNetNS(jobID))
	}
	jn.netns, jn.netnsID = path, jobID
	return jn, nil
}

// gateway is the job's gateway address.
func (jn *jobNetwork) gateway() netip.Addr { return jn.sb.GatewayIP }

// env returns the proxy variables every step gets.
func (jn *jobNetwork) env() []string {
	proxy := "http://" + netip.AddrPortFrom(jn.sb.GatewayIP, netpolicy.ProxyPort).String()
	noProxy := "localhost,127.0.0.1,::1"
	return []string{
		"HTTP_PROXY=" + proxy, "http_proxy=" + proxy,
		"HTTPS_PROXY=" + proxy, "https_proxy=" + proxy,
		"NO_PROXY=" + noProxy, "no_proxy=" + noProxy,
	}
}

// summary is what the gateway decided for the job; after close it is
// final and agrees with the trail.
func (jn *jobNetwork) summary() *netpolicy.Summary {
	if jn.reg == nil {
		return nil
	}
	s := jn.reg.Summary()
	return &s
}

// close unregisters the job from the gateway and tears its network down.
func (jn *jobNetwork) close(ctx context.Context) error {
	var errs []error
	if jn.reg != nil {
		if err := jn.reg.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stopping the gateway of job %s: %w", jn.job, err))
		}
	}
	if err := jn.sb.Teardown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("tearing down the network of job %s: %w", jn.job, err))
	}
	if jn.netns != "" {
		if err := jn.n.Sandbox.DeleteNetNS(jn.netnsID); err != nil {
			errs = append(errs, fmt.Errorf("deleting the network namespace of job %s: %w", jn.job, err))
		}
	}
	jn.n.events.remove(jn.job)
	return errors.Join(errs...)
}

// trustBundle returns the job's CA bundle: the host's roots and the
// runner's CA (which signs the gateway's certificates for
// credential-bound hosts).
func (n *Network) trustBundle() []byte {
	path := n.SystemRoots
	if path == "" {
		path = "/etc/ssl/certs/ca-certificates.crt"
	}
	b, _ := os.ReadFile(path) // a host without roots still trusts the runner's CA
	if n.CA != nil {
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		b = append(b, n.CA.CertPEM()...)
	}
	return b
}

// caVariables point the usual tools at the job's trust bundle.
func caVariables(path string) []string {
	return []string{
		"SSL_CERT_FILE=" + path,
		"CURL_CA_BUNDLE=" + path,
		"REQUESTS_CA_BUNDLE=" + path,
		"NODE_EXTRA_CA_CERTS=" + path,
		"GIT_SSL_CAINFO=" + path,
	}
}

// resolvConf points the job's resolver at its gateway.
func resolvConf(gw netip.Addr) []byte {
	return []byte("# written by airlock: the job's only resolver is its gateway\nnameserver " + gw.String() + "\noptions ndots:1 timeout:2 attempts:2\n")
}
