// Package config loads Airlock's configuration file (/etc/airlock/config.toml),
// in gitlab-runner's shape where the two overlap.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/gitlab"
	"github.com/airlock-ci/airlock/sandbox"
)

// DefaultPath is where the service reads its configuration.
const DefaultPath = "/etc/airlock/config.toml"

// DefaultStateDir holds the state store, keys and audit spool.
const DefaultStateDir = "/var/lib/airlock"

// Config is the whole configuration file.
type Config struct {
	// Agent settings, as gitlab-runner names them.
	Concurrent      int           `toml:"concurrent"`
	CheckInterval   time.Duration `toml:"check_interval"`
	ListenAddress   string        `toml:"listen_address"`
	ShutdownTimeout time.Duration `toml:"shutdown_timeout"`
	LogLevel        string        `toml:"log_level"`
	LogFormat       string        `toml:"log_format"`

	StateDir   string `toml:"state_dir"`
	RuntimeDir string `toml:"runtime_dir"`

	Docker  docker.Config `toml:"docker"`
	Network Network       `toml:"network"`
	Gateway Gateway       `toml:"gateway"`
	Egress  Egress        `toml:"egress"`
	Audit   audit.Config  `toml:"audit"`

	// Runners are the GitLab runners this agent serves ([[runners]]).
	Runners []gitlab.RunnerConfig `toml:"runners"`

	path string
	meta toml.MetaData
}

// Defaults returns a configuration with every default filled in.
func Defaults() *Config {
	return &Config{
		Concurrent:      1,
		CheckInterval:   3 * time.Second,
		ShutdownTimeout: 30 * time.Minute,
		LogLevel:        "info",
		LogFormat:       "text",
		StateDir:        DefaultStateDir,
		RuntimeDir:      "/run/airlock",
	}
}

// Load reads the configuration at path over the defaults. A missing file
// is not an error when optional is true (commands that work without one).
func Load(path string, optional bool) (*Config, error) {
	c := Defaults()
	c.path = path
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && optional {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	md, err := toml.Decode(string(b), c)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("%s:%d: %s", path, perr.Position.Line, perr.Message)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.meta = md
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("%s: unknown key %q", path, k.String()))
	}
	if verrs := c.Validate(); len(verrs) > 0 {
		for _, e := range verrs {
			errs = append(errs, fmt.Errorf("%s: %w", path, e))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// Path is the file the configuration was loaded from.
func (c *Config) Path() string { return c.path }

// Validate returns every problem at once, each naming its key.
func (c *Config) Validate() []error {
	var errs []error
	if c.Concurrent < 1 {
		errs = append(errs, fmt.Errorf("concurrent: must be at least 1, not %d", c.Concurrent))
	}
	if c.CheckInterval <= 0 {
		errs = append(errs, errors.New("check_interval: must be positive"))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("shutdown_timeout: must not be negative"))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format %q: must be text or json", c.LogFormat))
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: must be trace, debug, info, warn or error", c.LogLevel))
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir %q: must be an absolute path", c.StateDir))
	}
	if !filepath.IsAbs(c.RuntimeDir) {
		errs = append(errs, fmt.Errorf("runtime_dir %q: must be an absolute path", c.RuntimeDir))
	}
	errs = append(errs, c.Docker.Validate("docker")...)
	errs = append(errs, c.Network.validate()...)
	errs = append(errs, c.Gateway.validate()...)
	errs = append(errs, c.Egress.validate()...)
	errs = append(errs, c.Audit.Validate()...)
	names := map[string]int{}
	for i, r := range c.Runners {
		key := fmt.Sprintf("runners[%d]", i)
		errs = append(errs, r.Validate(key)...)
		if r.Name != "" {
			if j, dup := names[r.Name]; dup {
				errs = append(errs, fmt.Errorf("%s.name: %q is also the name of runners[%d]", key, r.Name, j))
			}
			names[r.Name] = i
		}
	}
	return errs
}

// Save writes the configuration to path atomically with mode 0600 (it
// holds runner tokens).
func (c *Config) Save(path string) error {
	var buf bytes.Buffer
	buf.WriteString("# Airlock configuration. See README.md for every key.\n")
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return fmt.Errorf("encoding configuration: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating configuration directory: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*.toml")
	if err != nil {
		return fmt.Errorf("writing configuration: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("writing configuration: %w", err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing configuration: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing configuration: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing configuration: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing configuration: %w", err)
	}
	c.path = path
	return nil
}

// Network is the [network] section: where job addresses come from.
type Network struct {
	// Pool is the prefix each job's /30 is taken from.
	Pool string `toml:"pool"`
	// PoolFile records the allocations of every airlock process on the host.
	PoolFile string `toml:"pool_file"`
}

// Prefix parses Pool ("" = the default).
func (n Network) Prefix() (netip.Prefix, error) {
	if n.Pool == "" {
		return netip.MustParsePrefix(sandbox.DefaultPool), nil
	}
	p, err := netip.ParsePrefix(n.Pool)
	if err != nil || !p.Addr().Is4() || p.Bits() > 28 {
		return netip.Prefix{}, fmt.Errorf("%q: want an IPv4 prefix of /28 or wider, like 10.213.0.0/16", n.Pool)
	}
	return p.Masked(), nil
}

func (n Network) validate() []error {
	if _, err := n.Prefix(); err != nil {
		return []error{fmt.Errorf("network.pool %w", err)}
	}
	if n.PoolFile != "" && !filepath.IsAbs(n.PoolFile) {
		return []error{fmt.Errorf("network.pool_file %q: must be an absolute path", n.PoolFile)}
	}
	return nil
}

// Gateway is the [gateway] section.
type Gateway struct {
	// Hosts maps names to addresses for the gateway, like /etc/hosts
	// (internal services; a fake internet in tests). The system resolver
	// answers every other name.
	Hosts map[string]string `toml:"hosts"`
	// HostsOnly resolves only the names in Hosts (everything else is
	// unknown): for hosts without DNS, and for tests, which must never send
	// a DNS query outside the machine.
	HostsOnly bool `toml:"hosts_only"`
	// UpstreamCAFile is a PEM bundle trusted, besides the system roots,
	// for upstreams of credential-bound hosts (where the gateway
	// terminates TLS and connects on).
	UpstreamCAFile string `toml:"upstream_ca_file"`
}

func (g Gateway) validate() []error {
	var errs []error
	if _, err := netpolicy.ParseHosts(g.Hosts); err != nil {
		errs = append(errs, fmt.Errorf("gateway.hosts: %w", err))
	}
	if g.UpstreamCAFile != "" {
		if _, err := os.Stat(g.UpstreamCAFile); err != nil {
			errs = append(errs, fmt.Errorf("gateway.upstream_ca_file: %w", err))
		}
	}
	return errs
}

// Egress is the [egress] section: the default ceiling for repositories
// that have none of their own (`airlock policy set`).
type Egress struct {
	// Ceiling lists the most any job may declare (host, host:port,
	// *.suffix:port, cidr:port). Empty: jobs get no egress at all.
	Ceiling []string `toml:"ceiling"`
	// Audit lets every name through and records everything (onboarding).
	Audit bool `toml:"audit"`
}

// Entries parses the ceiling.
func (e Egress) Entries() ([]netpolicy.Entry, error) { return netpolicy.ParseEntries(e.Ceiling) }

func (e Egress) validate() []error {
	if _, err := e.Entries(); err != nil {
		return []error{fmt.Errorf("egress.ceiling: %w", err)}
	}
	return nil
}
