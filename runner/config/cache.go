package config

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/airlock-ci/airlock/executors/docker"
)

// Cache configures the host-local job cache ([cache]).
type Cache struct {
	// Dir holds the caches; default <state_dir>/cache.
	Dir string `toml:"dir"`
	// MaxSize bounds the directory ("10GiB"); least recently used caches
	// are evicted beyond it. Default 5GiB.
	MaxSize string `toml:"max_size"`
	// Disabled turns caching off: cache: entries are skipped with a
	// warning in the job log.
	Disabled bool `toml:"disabled"`
}

// Services configures GitLab services: ([services]).
type Services struct {
	// WaitTimeout bounds the health check of a job's services
	// (gitlab-runner's wait_for_services_timeout); default 30s, negative
	// turns the check off.
	WaitTimeout time.Duration `toml:"wait_timeout"`
}

// GitLabSecrets configures GitLab's secrets: ([gitlab_secrets]).
type GitLabSecrets struct {
	// VaultServers are the Vault URLs (scheme://host[:port]) the runner
	// host may log in to and read from for a job's secrets:; a job naming
	// another one fails with runner_configuration_error.
	VaultServers []string `toml:"vault_servers"`
}

// CacheDir is the cache directory in effect.
func (c *Config) CacheDir() string {
	if c.Cache.Dir != "" {
		return c.Cache.Dir
	}
	return filepath.Join(c.StateDir, "cache")
}

// CacheMaxBytes is [cache] max_size in bytes (0: the default).
func (c *Config) CacheMaxBytes() (int64, error) {
	if c.Cache.MaxSize == "" {
		return 0, nil
	}
	return docker.ParseBytes(c.Cache.MaxSize)
}

func (c Cache) validate() []error {
	var errs []error
	if c.Dir != "" && !filepath.IsAbs(c.Dir) {
		errs = append(errs, fmt.Errorf("cache.dir %q: must be an absolute path", c.Dir))
	}
	if c.MaxSize != "" {
		if n, err := docker.ParseBytes(c.MaxSize); err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("cache.max_size %q: must be a positive size such as 10GiB", c.MaxSize))
		}
	}
	return errs
}
