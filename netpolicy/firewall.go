package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/hashicorp/go-hclog"
)

// FirewallSpec describes the packet filter of one job's sandbox.
type FirewallSpec struct {
	// RunnerID and JobID name the rules (chain name, comments).
	RunnerID string
	JobID    string
	// HostIf is the host-side veth of the job.
	HostIf string
	// NetNS is the path of the job's network namespace
	// (/var/run/netns/NAME, /proc/PID/ns/net, Docker's SandboxKey). When
	// empty, only the host-side rules are managed.
	NetNS string
	// GatewayIP is the host side of the job's /30, JobIP the job's address.
	GatewayIP netip.Addr
	JobIP     netip.Addr
	// TCPPorts and UDPPorts are the gateway ports the job may reach.
	TCPPorts []uint16
	UDPPorts []uint16
	// TransparentHTTP and TransparentTLS, when not zero, are gateway TCP
	// ports that the job's outgoing TCP port 80 and 443 connections are
	// redirected to (and are allowed like TCPPorts).
	TransparentHTTP uint16
	TransparentTLS  uint16
}

// Validate reports the first problem of the spec.
func (s FirewallSpec) Validate() error {
	ifErr := validIfName(s.HostIf)
	switch {
	case s.RunnerID == "" || s.JobID == "":
		return errors.New("runner id and job id are required")
	case ifErr != nil:
		return ifErr
	case !s.GatewayIP.Is4() || !s.JobIP.Is4():
		return fmt.Errorf("gateway %v and job %v must be IPv4 addresses", s.GatewayIP, s.JobIP)
	}
	return nil
}

// validIfName checks a host interface name.
func validIfName(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, " \t\"/") {
		return fmt.Errorf("invalid host interface name %q", name)
	}
	return nil
}

// Firewall installs and removes the per-job packet filter with the iptables
// backend Docker uses (nf_tables or legacy). Each rule set is installed with
// one iptables-restore call, so a job never sees half of its rules.
//
// A Firewall is safe for concurrent use; Apply and Remove of different jobs
// may run in parallel, also from several processes.
type Firewall struct {
	log     hclog.Logger
	backend string // "nf_tables" or "legacy"
	v4, v6  tools

	mu      sync.Mutex
	applied map[string]bool // chains whose jumps this Firewall inserted
}

// tools are the binaries of one address family and backend.
type tools struct {
	ipt     *iptables.IPTables
	restore string
	save    string
	wait    bool         // pass --wait (legacy: host-wide xtables lock)
	host    *groupCommit // host-side restores
}

// NewFirewall detects the iptables backend in use on the host (the one
// `iptables --version` reports, which is what Docker uses) and returns a
// Firewall using the matching binaries.
func NewFirewall(log hclog.Logger) (*Firewall, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	out, err := exec.Command("iptables", "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("detecting iptables backend: %w", err)
	}
	backend := "legacy"
	if strings.Contains(string(out), "(nf_tables)") {
		backend = "nf_tables"
	}
	return newFirewall(log, backend)
}

// newFirewall returns a Firewall using the binaries of backend
// ("nf_tables" or "legacy").
func newFirewall(log hclog.Logger, backend string) (*Firewall, error) {
	f := &Firewall{log: log.Named("firewall"), backend: backend, applied: map[string]bool{}}
	short := map[string]string{"nf_tables": "nft", "legacy": "legacy"}[backend]
	// go-iptables runs the binary to learn its version: both families at
	// once, it is on every runner's start path.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, fam := range []struct {
		t     *tools
		name  string
		proto iptables.Protocol
	}{{&f.v4, "iptables", iptables.ProtocolIPv4}, {&f.v6, "ip6tables", iptables.ProtocolIPv6}} {
		wg.Go(func() {
			bin := lookBinary(fam.name+"-"+short, fam.name)
			ipt, err := iptables.New(iptables.IPFamily(fam.proto), iptables.Path(bin), iptables.Timeout(10))
			if err != nil {
				errs[i] = fmt.Errorf("opening %s: %w", bin, err)
				return
			}
			fam.t.ipt = ipt
			fam.t.restore = lookBinary(fam.name+"-"+short+"-restore", fam.name+"-restore")
			fam.t.save = lookBinary(fam.name+"-"+short+"-save", fam.name+"-save")
			fam.t.wait = backend == "legacy"
			fam.t.host = new(groupCommit)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	f.log.Debug("iptables backend detected", "backend", backend, "restore", f.v4.restore)
	return f, nil
}

// Backend returns "nf_tables" or "legacy".
func (f *Firewall) Backend() string { return f.backend }

func lookBinary(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return names[len(names)-1]
}

// Apply installs the job's rules: the authoritative host-side chain, jump
// and FORWARD drop (IPv4 and IPv6) and, when spec.NetNS is set, the rules
// inside the job's namespace, with one restore per rule set, run in
// parallel and without prior listing (the cost is a few execs, not a few
// dozen). Applying the same spec again through the same Firewall rewrites
// the per-job chain without duplicating the jumps; rules a dead process left
// for the same job are not looked for (Sweep or Remove deletes them, however
// often they are duplicated). When Apply fails, whatever it installed is
// removed again.
func (f *Firewall) Apply(ctx context.Context, spec FirewallSpec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("applying firewall for job %s: %w", spec.JobID, err)
	}
	key := ChainName(spec.RunnerID, spec.JobID)
	f.mu.Lock()
	applied := f.applied[key]
	f.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	took := make([]time.Duration, 4)
	run := func(i int, fn func() error) {
		wg.Go(func() {
			start := time.Now()
			errs[i] = fn()
			took[i] = time.Since(start)
		})
	}
	run(0, func() error { return f.v4.restoreHost(ctx, hostRules4(spec, !applied)) })
	if !applied {
		run(1, func() error { return f.v6.restoreHost(ctx, hostRules6(spec)) })
	}
	if spec.NetNS != "" {
		run(2, func() error {
			return inNetNS(spec.NetNS, func() error { return f.v4.restoreRules(ctx, nsRules4(spec), false) })
		})
		run(3, func() error {
			return inNetNS(spec.NetNS, func() error { return f.v6.restoreRules(ctx, nsRules6(), false) })
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		rmErr := f.Remove(context.WithoutCancel(ctx), spec)
		return fmt.Errorf("applying firewall for job %s: %w", spec.JobID, errors.Join(err, rmErr))
	}
	f.mu.Lock()
	f.applied[key] = true
	f.mu.Unlock()
	f.log.Debug("firewall applied", "job", spec.JobID, "veth", spec.HostIf, "chain", ChainName(spec.RunnerID, spec.JobID),
		"host_v4", took[0], "host_v6", took[1], "ns_v4", took[2], "ns_v6", took[3])
	return nil
}

// Remove deletes the job's host-side rules: the INPUT jump, the per-job
// chain, the FORWARD drop and the IPv6 rules. The rules inside the job's
// namespace die with the namespace. Remove is idempotent and succeeds after
// a partial or failed Apply.
func (f *Firewall) Remove(ctx context.Context, spec FirewallSpec) error {
	key := ChainName(spec.RunnerID, spec.JobID)
	f.mu.Lock()
	applied := f.applied[key]
	delete(f.applied, key)
	f.mu.Unlock()
	rt, jt := RunnerTag(spec.RunnerID), JobTag(spec.JobID)
	match := func(r, j string) bool { return r == rt && j == jt }
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, fam := range []struct {
		t     tools
		rules string
	}{{f.v4, removalRules4(spec)}, {f.v6, removalRules6(spec)}} {
		wg.Go(func() {
			// Fast path: delete exactly what Apply inserted. Otherwise (or
			// when that fails, e.g. someone deleted a rule) list and
			// delete whatever matches the job.
			if applied && fam.t.restoreHost(ctx, fam.rules) == nil {
				return
			}
			errs[i] = fam.t.removeMatching(ctx, match)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing firewall for job %s: %w", spec.JobID, err)
	}
	return nil
}

// Sweep removes the host-side rules of runner runnerID whose job tag keep
// does not hold on to. It never touches another runner's rules.
func (f *Firewall) Sweep(ctx context.Context, runnerID string, keep func(jobTag string) bool) error {
	rt := RunnerTag(runnerID)
	match := func(r, jt string) bool { return r == rt && !keep(jt) }
	f.mu.Lock()
	for k := range f.applied {
		if r, jt, ok := parseChainName(k); ok && match(r, jt) {
			delete(f.applied, k)
		}
	}
	f.mu.Unlock()
	if err := f.removeMatching(ctx, match); err != nil {
		return fmt.Errorf("sweeping firewall of runner %s: %w", runnerID, err)
	}
	return nil
}

// Verify checks that the job's host-side rules are in place: the per-job
// chain, its INPUT jump and the FORWARD drop (IPv4), and the IPv6 drops.
func (f *Firewall) Verify(ctx context.Context, spec FirewallSpec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("verifying firewall for job %s: %w", spec.JobID, err)
	}
	checks := []struct {
		t     tools
		chain string
		rule  []string
	}{
		{f.v4, "INPUT", inputJump4(spec)},
		{f.v4, "FORWARD", forwardDrop(spec)},
		{f.v6, "INPUT", inputDrop6(spec)},
		{f.v6, "FORWARD", forwardDrop(spec)},
	}
	var errs []error
	if ok, err := f.v4.ipt.ChainExists("filter", ChainName(spec.RunnerID, spec.JobID)); err != nil || !ok {
		errs = append(errs, fmt.Errorf("chain %s missing (%v)", ChainName(spec.RunnerID, spec.JobID), err))
	}
	for _, c := range checks {
		if ok, err := c.t.ipt.Exists("filter", c.chain, c.rule...); err != nil || !ok {
			errs = append(errs, fmt.Errorf("%s rule %v missing (%v)", c.chain, c.rule, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("verifying firewall for job %s: %w", spec.JobID, err)
	}
	return nil
}
