package runner

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
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/sandbox"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/githubapp"
	"github.com/airlock-ci/airlock/secrets/vault"
)

// Open builds a complete runner from the configuration: the Docker
// executor, the network sandbox with its firewall and egress gateway, the
// secret store and credential broker, and the audit trail with its
// shipper. Close releases them. Call Recover before the first job.
func Open(ctx context.Context, cfg *config.Config, log hclog.Logger) (r *Runner, err error) {
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
	runnerID, err := LoadOrCreateID(state)
	if err != nil {
		return nil, err
	}
	ex, err := docker.New(ctx, cfg.Docker, log)
	if err != nil {
		return nil, err
	}
	c.add(ex.Close)
	pull, _ := executors.ParsePullPolicy(cfg.Docker.Pull)
	r, err = New(Config{RunnerID: runnerID, RuntimeDir: cfg.RuntimeDir, Grace: ex.Grace(), Pull: pull}, ex, log)
	if err != nil {
		return nil, err
	}
	r.docker = ex

	store, err := secrets.Open(state, secrets.OpenOptions{Shared: true})
	if err != nil {
		return nil, err
	}
	c.add(store.Close)

	if r.Audit, err = openAuditor(ctx, cfg, runnerID, store, log, c); err != nil {
		return nil, err
	}
	r.Broker, err = secrets.NewBroker(secrets.BrokerOptions{
		Store:  store,
		Logger: log,
		Events: func(ctx context.Context, e secrets.Event) error {
			r.metrics.Load().credentialEvent(e)
			return r.Audit.brokerEvent(ctx, e)
		},
		Backends: map[string]secrets.Backend{
			secrets.BackendVault:     vault.New(0),
			secrets.BackendGitHubApp: githubapp.New(nil),
		},
	})
	if err != nil {
		return nil, err
	}
	if r.Network, err = openNetwork(cfg, runnerID, store, log, c); err != nil {
		return nil, err
	}
	// Revocations that failed at a job's end are retried until they
	// succeed or the credential expires.
	sctx, stopSweeper := context.WithCancel(context.WithoutCancel(ctx))
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		r.Broker.RunSweeper(sctx, time.Minute)
	}()
	c.add(func() error { stopSweeper(); <-swept; return nil })
	r.closers = c
	return r, nil
}

func openAuditor(ctx context.Context, cfg *config.Config, runnerID string, store *secrets.Store, log hclog.Logger, c *closers) (*Auditor, error) {
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
	return &Auditor{SpoolDir: spool, Dir: dir, Key: key, Kick: sh.Kick, runnerID: runnerID, log: log}, nil
}

func openNetwork(cfg *config.Config, runnerID string, store *secrets.Store, log hclog.Logger, c *closers) (*Network, error) {
	pool, err := cfg.Network.Prefix()
	if err != nil {
		return nil, err
	}
	fw, err := netpolicy.NewFirewall(log)
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
	n := &Network{Sandbox: sb, CA: ca}
	n.Ceiling = func(repo string) (Ceiling, error) {
		p, ok, err := store.EgressCeiling(repo)
		if err != nil {
			return Ceiling{}, err
		}
		if !ok {
			return Ceiling{Entries: ceiling, Audit: cfg.Egress.Audit, Scope: fmt.Sprintf("repo %q (no policy set; [egress] ceiling of %s)", repo, configName)}, nil
		}
		entries, err := netpolicy.ParseEntries(p.Egress)
		if err != nil {
			return Ceiling{}, fmt.Errorf("egress policy %s: %w", p.RepoPattern, err)
		}
		return Ceiling{Entries: entries, Audit: p.Audit, Scope: fmt.Sprintf("repo %q (policy %s)", repo, p.RepoPattern)}, nil
	}
	resolver := netpolicy.HostsResolver{Hosts: hosts, Next: netpolicy.SystemResolver{}}
	if cfg.Gateway.HostsOnly {
		resolver.Next = nil
	}
	gw, err := netpolicy.NewGateway(netpolicy.GatewayConfig{
		Resolver: resolver,
		Guard:    netpolicy.GuardConfig{JobPool: []netip.Prefix{pool}},
		Events:   n,
		Logger:   log,
		CA:       ca,
		RootCAs:  roots,
	})
	if err != nil {
		return nil, err
	}
	c.add(gw.Close)
	n.Gateway = gw
	return n, nil
}

// Close releases what Open built. Jobs must have finished.
func (r *Runner) Close() error {
	if r.closers == nil {
		return nil
	}
	return r.closers.close()
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
