// Package wiring builds a complete runner from the configuration: which
// executor, which firewall, which credential backends and audit sinks.
// The lifecycle package (runner) receives these parts and knows none of
// the concrete ones; the commands (cmd/airlock) and the integration tests
// of a fully wired runner call Open. It is not in cmd/airlock because a
// main package cannot be imported by those tests.
package wiring

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/containerd"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/sandbox"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/githubapp"
	"github.com/airlock-ci/airlock/secrets/vault"
)

// Open builds a complete runner from the configuration: the executor
// (Config.Executor), the network sandbox with its firewall and egress gateway, the
// secret store and credential broker, and the audit trail with its
// shipper. Close releases them. Call Recover before the first job.
func Open(ctx context.Context, cfg *config.Config, log hclog.Logger) (r *runner.Runner, err error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &closers{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.close())
		}
	}()
	if os.Geteuid() != 0 {
		return nil, errors.New("airlock needs root: it creates network namespaces, veth pairs and iptables rules for every job (run it with sudo, or as the airlock service)")
	}
	state := cfg.StateDir
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	runnerID, err := runner.LoadOrCreateID(state)
	if err != nil {
		return nil, err
	}
	// Choosing the firewall execs iptables a few times: it runs beside
	// the executor's and the stores' opening (every airlock exec waits
	// for Open). It is always waited for before Open returns, so that
	// what it opened is closed with the rest on a failure.
	type opened struct {
		fw  sandbox.Firewall
		err error
	}
	fwc := make(chan opened, 1)
	go func() {
		fw, err := openFirewall(cfg.Network.Firewall, log, c)
		fwc <- opened{fw, err}
	}()
	fwTaken := false
	defer func() {
		if !fwTaken {
			<-fwc
		}
	}()
	ex, rcfg, err := openExecutor(ctx, cfg, log, c)
	if err != nil {
		return nil, err
	}
	rcfg.RunnerID, rcfg.RuntimeDir, rcfg.ServiceWait = runnerID, cfg.RuntimeDir, cfg.Services.WaitTimeout
	r, err = runner.New(rcfg, ex, log)
	if err != nil {
		return nil, err
	}

	store, err := secrets.Open(state, secrets.OpenOptions{Shared: true})
	if err != nil {
		return nil, err
	}
	c.add(store.Close)
	fs, err := openFleet(ctx, cfg, runnerID, store, log, c)
	if err != nil {
		return nil, err
	}

	if r.Audit, err = openAuditor(ctx, cfg, runnerID, store, log, c); err != nil {
		return nil, err
	}
	r.Broker, err = secrets.NewBroker(secrets.BrokerOptions{
		Store:  store,
		Logger: log,
		Events: r.CredentialEvent,
		Backends: map[string]secrets.Backend{
			secrets.BackendVault:     vault.New(0),
			secrets.BackendGitHubApp: githubapp.New(nil),
		},
		PeerDone: peerDone(fs),
	})
	if err != nil {
		return nil, err
	}
	if fs != nil {
		if err := startPeers(ctx, r, fs, store, runnerID, log, c); err != nil {
			return nil, err
		}
	}
	o := <-fwc
	fwTaken = true
	if o.err != nil {
		return nil, o.err
	}
	if r.Network, err = openNetwork(cfg, runnerID, o.fw, store, log, c); err != nil {
		return nil, err
	}
	r.LeakScan = runner.StoreLeakScan(store)
	// Revocations that failed at a job's end are retried until they
	// succeed or the credential expires.
	sctx, stopSweeper := context.WithCancel(context.WithoutCancel(ctx))
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		r.Broker.RunSweeper(sctx, time.Minute)
	}()
	c.add(func() error { stopSweeper(); <-swept; return nil })
	r.OnClose(c.close)
	return r, nil
}

// openExecutor opens the executor the configuration names and returns
// the runner settings that come from it.
func openExecutor(ctx context.Context, cfg *config.Config, log hclog.Logger, c *closers) (executors.Executor, runner.Config, error) {
	pull, _ := executors.ParsePullPolicy(cfg.PullPolicy())
	allowed, _ := executors.ParsePullPolicies("allowed_pull_policies", cfg.AllowedPullPolicies())
	images, services := cfg.AllowedImages()
	switch name := cfg.ExecutorName(); name {
	case config.ExecutorDocker:
		dcfg := cfg.Docker
		dcfg.RuntimeDir, dcfg.StateDir = cfg.RuntimeDir, cfg.StateDir
		ex, err := docker.New(ctx, dcfg, log)
		if err != nil {
			return nil, runner.Config{}, err
		}
		c.add(ex.Close)
		return ex, runner.Config{Grace: ex.Grace(), Pull: pull, AllowedPull: allowed, Limits: cfg.Docker.Limits(),
			ServiceLimits: cfg.Docker.ServiceLimits.Limits(), AllowedImages: images, AllowedServices: services}, nil
	case config.ExecutorContainerd:
		ccfg := cfg.Containerd
		ccfg.RuntimeDir, ccfg.StateDir = cfg.RuntimeDir, cfg.StateDir
		ex, err := containerd.New(ctx, ccfg, log)
		if err != nil {
			return nil, runner.Config{}, err
		}
		c.add(ex.Close)
		// Limits and the read-only root come from [containerd] itself.
		return ex, runner.Config{Grace: ex.Grace(), Pull: pull, AllowedPull: allowed,
			ServiceLimits: cfg.Containerd.ServiceLimits.Limits(), AllowedImages: images, AllowedServices: services}, nil
	default:
		return nil, runner.Config{}, fmt.Errorf("executor %q: must be docker or containerd", name)
	}
}

func openAuditor(ctx context.Context, cfg *config.Config, runnerID string, store *secrets.Store, log hclog.Logger, c *closers) (*runner.Auditor, error) {
	key, err := audit.LoadOrCreateKey(audit.KeyPath(cfg.StateDir))
	if err != nil {
		return nil, err
	}
	token := ""
	if name := cfg.Audit.HTTPTokenSecret; name != "" {
		sec, err := store.Secret(name)
		if err != nil {
			return nil, fmt.Errorf("audit.http_token_secret: %w", err)
		}
		token = string(sec.Value)
	}
	sinks, err := cfg.Audit.Sinks(cfg.StateDir, token, os.Stdout)
	if err != nil {
		return nil, err
	}
	spool := audit.SpoolDir(cfg.StateDir)
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("creating audit spool: %w", err)
	}
	dir := cfg.Audit.Dir
	if dir == "" {
		dir = filepath.Join(cfg.StateDir, "audit")
	}
	sh := audit.NewShipper(spool, sinks, audit.ShipperOptions{Logger: log})
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sh.Run(sctx)
	}()
	// Closing stops the shipper after one last delivery pass.
	c.add(func() error { cancel(); <-done; return nil })
	return runner.NewAuditor(runner.AuditorConfig{SpoolDir: spool, Dir: dir, Key: key, Kick: sh.Kick, RunnerID: runnerID, Logger: log}), nil
}

func openNetwork(cfg *config.Config, runnerID string, fw sandbox.Firewall, store *secrets.Store, log hclog.Logger, c *closers) (*runner.Network, error) {
	pool, err := cfg.Network.Prefix()
	if err != nil {
		return nil, err
	}
	sb, err := sandbox.NewManager(sandbox.Config{
		RunnerID:        runnerID,
		Pool:            pool,
		PoolFile:        cfg.Network.PoolFile,
		Firewall:        fw,
		TCPPorts:        []uint16{netpolicy.DNSPort, netpolicy.ProxyPort},
		UDPPorts:        []uint16{netpolicy.DNSPort},
		TransparentHTTP: netpolicy.TransparentHTTPPort,
		TransparentTLS:  netpolicy.TransparentTLSPort,
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	ca, err := netpolicy.LoadOrCreateCA(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	hosts, err := netpolicy.ParseHosts(cfg.Gateway.Hosts)
	if err != nil {
		return nil, fmt.Errorf("gateway.hosts: %w", err)
	}
	var roots *x509.CertPool
	if f := cfg.Gateway.UpstreamCAFile; f != "" {
		if roots, err = x509.SystemCertPool(); err != nil {
			roots = x509.NewCertPool()
		}
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("gateway.upstream_ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("gateway.upstream_ca_file %s: no PEM certificate in it", f)
		}
	}
	configName := cfg.Path()
	if configName == "" {
		configName = "the built-in configuration"
	}
	ceiling, err := cfg.Egress.Entries()
	if err != nil {
		return nil, fmt.Errorf("egress.ceiling: %w", err)
	}
	n := &runner.Network{Sandbox: sb, CA: ca}
	n.Ceiling = func(repo, instance string) (runner.Ceiling, error) {
		p, ok, err := store.EgressCeiling(repo, instance)
		if err != nil {
			return runner.Ceiling{}, err
		}
		if !ok {
			return runner.Ceiling{Entries: ceiling, Audit: cfg.Egress.Audit, Scope: fmt.Sprintf("repo %q (no policy set; [egress] ceiling of %s)", repo, configName)}, nil
		}
		entries, err := netpolicy.ParseEntries(p.Egress)
		if err != nil {
			return runner.Ceiling{}, fmt.Errorf("egress policy %s: %w", p.Scope(), err)
		}
		return runner.Ceiling{Entries: entries, Audit: p.Audit, Scope: fmt.Sprintf("repo %q (policy %s)", repo, p.Scope())}, nil
	}
	resolver := netpolicy.HostsResolver{Hosts: hosts, Next: netpolicy.SystemResolver{}}
	if cfg.Gateway.HostsOnly {
		resolver.Next = nil
	}
	src, err := netpolicy.ResolveEgressSource(cfg.Gateway.EgressSource)
	if err != nil {
		return nil, err
	}
	gcfg := netpolicy.GatewayConfig{
		Resolver: resolver,
		Guard:    netpolicy.GuardConfig{JobPool: []netip.Prefix{pool}},
		Events:   n,
		Logger:   log,
		CA:       ca,
		RootCAs:  roots,
	}
	gcfg.EgressSource = src
	gw, err := netpolicy.NewGateway(gcfg)
	if err != nil {
		return nil, err
	}
	c.add(gw.Close)
	n.Gateway = gw
	return n, nil
}

// closers run in reverse order of registration.
type closers struct {
	mu  sync.Mutex
	fns []func() error
}

func (c *closers) add(f func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, f)
}

func (c *closers) close() error {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	var errs []error
	for i := len(fns) - 1; i >= 0; i-- {
		errs = append(errs, fns[i]())
	}
	return errors.Join(errs...)
}

// openFirewall opens the packet filter backend the mode names (see
// config.Network.Firewall). Its Sweep also sweeps the other backend, which
// an earlier run may have used.
func openFirewall(mode string, log hclog.Logger, c *closers) (sandbox.Firewall, error) {
	// One iptables Firewall both probes the host and, where chosen (or
	// swept beside nftables), filters.
	ipt, err := netpolicy.NewFirewall(log)
	backend, why, cerr := netpolicy.ChooseFirewall(mode, netpolicy.HostProbe(ipt, err))
	if cerr != nil {
		return nil, fmt.Errorf("network.firewall: %w", cerr)
	}
	if err != nil && backend == netpolicy.FirewallIPTables {
		return nil, err
	}
	if backend == netpolicy.FirewallIPTables {
		log.Debug("firewall backend chosen", "backend", backend, "why", why)
		return ipt, nil
	}
	nft, nerr := netpolicy.NewNFTables(log, netpolicy.NFTablesOptions{DeferRemove: true})
	if nerr != nil {
		return nil, fmt.Errorf("network.firewall %s: %w", backend, nerr)
	}
	c.add(nft.Close)
	log.Debug("firewall backend chosen", "backend", backend, "why", why)
	if err != nil {
		return nft, nil // no iptables on the host: nothing of it to sweep
	}
	return sweepingBoth{nft, ipt}, nil
}

// sweepingBoth is a firewall whose Sweep also sweeps another backend.
type sweepingBoth struct {
	sandbox.Firewall
	other sandbox.Firewall
}

func (s sweepingBoth) Sweep(ctx context.Context, runnerID string, keep func(jobTag string) bool) error {
	return errors.Join(s.Firewall.Sweep(ctx, runnerID, keep), s.other.Sweep(ctx, runnerID, keep))
}
