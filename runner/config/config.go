// Package config loads Airlock's configuration file (/etc/airlock/config.toml),
// in gitlab-runner's shape where the two overlap.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/airlock-ci/airlock/executors/docker"
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

	Docker docker.Config `toml:"docker"`

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
