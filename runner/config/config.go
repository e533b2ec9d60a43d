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
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors/containerd"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/atomicfile"
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
	// ReportTimeout bounds a job's report to its coordinator (audit
	// upload, rest of the log, final state), counted from when reporting
	// starts, however long the job ran.
	ReportTimeout time.Duration `toml:"report_timeout"`
	LogLevel      string        `toml:"log_level"`
	LogFormat     string        `toml:"log_format"`

	StateDir   string `toml:"state_dir"`
	RuntimeDir string `toml:"runtime_dir"`

	// Executor runs every job: "docker" (default) or "containerd".
	Executor   string            `toml:"executor"`
	Docker     docker.Config     `toml:"docker"`
	Containerd containerd.Config `toml:"containerd"`
	Network    Network           `toml:"network"`
	Gateway    Gateway           `toml:"gateway"`
	Egress     Egress            `toml:"egress"`
	Audit      audit.Config      `toml:"audit"`
	Pool       Pool              `toml:"pool"`
	Store      Store             `toml:"store"`
	Cache      Cache             `toml:"cache"`
	Services   Services          `toml:"services"`
	// GitLabSecrets is [gitlab_secrets]: where secrets: may come from.
	GitLabSecrets GitLabSecrets `toml:"gitlab_secrets"`

	// Runners are the GitLab runners this agent serves ([[runners]]).
	Runners []gitlab.RunnerConfig `toml:"runners"`
	// GitHub are the GitHub runner registrations it serves ([[github]]).
	GitHub []GitHubRunner `toml:"github"`
	// Autoscale entries make ephemeral GitHub runners on demand.
	Autoscale []Autoscale `toml:"autoscale"`

	path string
	meta toml.MetaData
}

// Defaults returns a configuration with every default filled in.
func Defaults() *Config {
	return &Config{
		Concurrent:      1,
		CheckInterval:   3 * time.Second,
		ShutdownTimeout: 30 * time.Minute,
		ReportTimeout:   10 * time.Minute,
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
	if c.ReportTimeout <= 0 {
		errs = append(errs, errors.New("report_timeout: must be positive"))
	}
	errs = append(errs, c.Store.validate()...)
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
	errs = append(errs, c.Containerd.Validate("containerd")...)
	errs = append(errs, c.validateExecutor()...)
	errs = append(errs, c.Network.validate()...)
	errs = append(errs, c.Pool.validate()...)
	if c.Pool.Networks > 0 && c.ExecutorName() == ExecutorDocker && c.Docker.StepServer == "off" {
		errs = append(errs, fmt.Errorf("pool.networks %d: with the Docker executor a pooled network is held by a container running the step server, and docker.step_server is \"off\"", c.Pool.Networks))
	}
	errs = append(errs, c.Gateway.validate()...)
	errs = append(errs, c.Egress.validate()...)
	errs = append(errs, c.Cache.validate()...)
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
	ghNames := map[string]int{}
	for i, r := range c.GitHub {
		key := fmt.Sprintf("github[%d]", i)
		errs = append(errs, r.Validate(key)...)
		if j, dup := ghNames[r.Name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: %q is also the name of github[%d]", key, r.Name, j))
		}
		ghNames[r.Name] = i
	}
	asNames, paths := map[string]int{}, map[string]int{}
	for i, a := range c.Autoscale {
		key := fmt.Sprintf("autoscale[%d]", i)
		errs = append(errs, a.Validate(key, c.ListenAddress)...)
		if j, dup := asNames[a.Name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: %q is also the name of autoscale[%d]", key, a.Name, j))
		}
		asNames[a.Name] = i
		if j, dup := paths[a.Path()]; dup && a.WebhookSecret != "" {
			errs = append(errs, fmt.Errorf("%s.webhook_path: %q is also the webhook of autoscale[%d]", key, a.Path(), j))
		}
		paths[a.Path()] = i
	}
	return errs
}

// Executor names.
const (
	ExecutorDocker     = "docker"
	ExecutorContainerd = "containerd"
)

// ExecutorName is the executor that runs every job: the top-level
// executor key, else the one every [[runners]] names, else Docker.
func (c *Config) ExecutorName() string {
	if c.Executor != "" {
		return c.Executor
	}
	for _, r := range c.Runners {
		if r.Executor != "" {
			return r.Executor
		}
	}
	return ExecutorDocker
}

// JobMemory is the memory limit of the selected executor's job
// containers, in bytes (its default when unset or unparsable: Validate
// reports that).
func (c *Config) JobMemory() int64 {
	s := c.Docker.Memory
	if c.ExecutorName() == ExecutorContainerd {
		s = c.Containerd.Memory
	}
	if n, err := docker.ParseBytes(s); err == nil && s != "" {
		return n
	}
	return docker.DefaultMemory
}

// DefaultImage is the selected executor's image for jobs that name none.
func (c *Config) DefaultImage() string {
	if c.ExecutorName() == ExecutorContainerd {
		return c.Containerd.Image
	}
	return c.Docker.Image
}

// PullPolicy is the selected executor's default pull policy.
func (c *Config) PullPolicy() string {
	if c.ExecutorName() == ExecutorContainerd {
		return c.Containerd.Pull
	}
	return c.Docker.Pull
}

// AllowedPullPolicies are the selected executor's allowed_pull_policies.
func (c *Config) AllowedPullPolicies() []string {
	if c.ExecutorName() == ExecutorContainerd {
		return c.Containerd.AllowedPull
	}
	return c.Docker.AllowedPull
}

// AllowedImages and AllowedServices are the selected executor's
// allowed_images and allowed_services, each with its default image
// added when it has patterns (the admin's own choice is always allowed).
func (c *Config) AllowedImages() (images, services []string) {
	ims, svcs := c.Docker.AllowedImages, c.Docker.AllowedServices
	if c.ExecutorName() == ExecutorContainerd {
		ims, svcs = c.Containerd.AllowedImages, c.Containerd.AllowedServices
	}
	if def := c.DefaultImage(); len(ims) > 0 && def != "" {
		ims = append(append([]string{}, ims...), def)
	}
	return ims, svcs
}

// SetPullPolicy overrides the selected executor's pull policy (a flag).
func (c *Config) SetPullPolicy(p string) {
	if c.ExecutorName() == ExecutorContainerd {
		c.Containerd.Pull = p
	} else {
		c.Docker.Pull = p
	}
}

// Grace is the selected executor's SIGTERM-to-SIGKILL grace period
// (0: the executor's default).
func (c *Config) Grace() time.Duration {
	if c.ExecutorName() == ExecutorContainerd {
		return c.Containerd.Grace
	}
	return c.Docker.Grace
}

// validateExecutor checks the executor key and that every [[runners]]
// entry agrees with it: one executor runs every job of the agent.
func (c *Config) validateExecutor() []error {
	var errs []error
	switch c.Executor {
	case "", ExecutorDocker, ExecutorContainerd:
	default:
		errs = append(errs, fmt.Errorf("executor %q: must be docker or containerd", c.Executor))
	}
	want := c.ExecutorName()
	for i, r := range c.Runners {
		if r.Executor != "" && r.Executor != want {
			errs = append(errs, fmt.Errorf("runners[%d].executor %q: the agent runs every job with one executor (%s); remove the key or make it %q", i, r.Executor, want, want))
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
	if err := atomicfile.WriteFile(path, buf.Bytes(), 0o600); err != nil {
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
	// Firewall is the packet filter backend: "auto" (default: native
	// nftables when the host's iptables is nf_tables-based and its INPUT
	// policy accepts, iptables otherwise), "iptables" or "nftables".
	Firewall string `toml:"firewall"`
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
	var errs []error
	if _, err := n.Prefix(); err != nil {
		errs = append(errs, fmt.Errorf("network.pool %w", err))
	}
	if n.PoolFile != "" && !filepath.IsAbs(n.PoolFile) {
		errs = append(errs, fmt.Errorf("network.pool_file %q: must be an absolute path", n.PoolFile))
	}
	switch n.Firewall {
	case "", netpolicy.FirewallAuto, netpolicy.FirewallIPTables, netpolicy.FirewallNFTables:
	default:
		errs = append(errs, fmt.Errorf("network.firewall %q: must be auto, iptables or nftables", n.Firewall))
	}
	return errs
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
	// EgressSource is the address (or interface) upstream connections
	// leave from, so that API keys can be IP-restricted to runner hosts.
	EgressSource string `toml:"egress_source"`
}

func (g Gateway) validate() []error {
	var errs []error
	if _, err := netpolicy.ParseHosts(g.Hosts); err != nil {
		errs = append(errs, fmt.Errorf("gateway.hosts: %w", err))
	}
	if _, err := netpolicy.ResolveEgressSource(g.EgressSource); err != nil {
		errs = append(errs, err)
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

// Pool is the [pool] section: warm sandboxes `airlock run` keeps ready
// for the images listed (and the most used recently), so that a job of one of them starts without a
// container or a network being made on its path.
type Pool struct {
	// Images are the images to keep warm sandboxes of.
	Images []string `toml:"images"`
	// Size is how many warm sandboxes are kept per image (default 1).
	Size int `toml:"size"`
	// Recent also keeps sandboxes of the images most used by the last 100
	// jobs: this many of them (0: none; at most MaxPoolRecent).
	Recent int `toml:"recent"`
	// Networks keeps this many job network namespaces plumbed and
	// firewalled ahead for jobs of any other image (containerd only: the
	// Docker engine makes each container's namespace itself).
	Networks int `toml:"networks"`
}

// MaxPoolRecent bounds pool.recent.
const MaxPoolRecent = 16

// Sizes maps each image to its number of warm sandboxes.
func (p Pool) Sizes() map[string]int {
	n := p.Size
	if n == 0 {
		n = 1
	}
	out := map[string]int{}
	for _, img := range p.Images {
		out[img] = n
	}
	return out
}

func (p Pool) validate() []error {
	var errs []error
	if p.Size < 0 {
		errs = append(errs, fmt.Errorf("pool.size %d: must not be negative", p.Size))
	}
	if p.Networks < 0 {
		errs = append(errs, fmt.Errorf("pool.networks %d: must not be negative", p.Networks))
	}
	if p.Recent < 0 || p.Recent > MaxPoolRecent {
		errs = append(errs, fmt.Errorf("pool.recent %d: must be between 0 and %d", p.Recent, MaxPoolRecent))
	}
	for i, img := range p.Images {
		if strings.TrimSpace(img) == "" {
			errs = append(errs, fmt.Errorf("pool.images[%d]: empty image name", i))
		}
	}
	return errs
}
