// Package hostcheck checks that a build host can run Airlock: kernel
// features, iptables and its backend, the Docker engine, the state and
// runtime directories, key file modes, the clock and the configuration.
// Each check returns a Result that says what is wrong and how to fix it;
// `airlock doctor` prints them.
//
// The checks read the host through an Env, so that tests can point them at
// a temporary tree, a recording command runner and fake probes.
package hostcheck

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/runner/config"
)

// Status is a check's verdict.
type Status int

// Statuses, from good to bad. Only Fail makes the host unusable.
const (
	OK Status = iota
	Info
	Warn
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "OK"
	case Info:
		return "INFO"
	case Warn:
		return "WARN"
	case Fail:
		return "FAIL"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Result is the outcome of one check.
type Result struct {
	Name   string // short name of what was checked ("iptables backend")
	Status Status
	Detail string // what was found
	Fix    string // how to fix it; empty when Status is OK
}

// Commander runs host commands for the checks. The checks call it from
// one goroutine at a time.
type Commander interface {
	// LookPath finds an executable like exec.LookPath.
	LookPath(file string) (string, error)
	// Output runs name with args and returns its standard output. A
	// command that cannot start or exits non-zero returns an error that
	// includes its standard error.
	Output(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecCommander runs real commands.
type ExecCommander struct{}

// LookPath implements Commander.
func (ExecCommander) LookPath(file string) (string, error) { return exec.LookPath(file) }

// Output implements Commander.
func (ExecCommander) Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("running %s: %w: %s", name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// Env is the host as the checks see it. NewEnv returns the real host;
// tests replace fields.
type Env struct {
	// Root prefixes every absolute path the checks read ("" is /).
	Root string
	// Cmd runs iptables and friends.
	Cmd Commander
	// Euid is the effective user id.
	Euid func() int
	// Now is the current time.
	Now func() time.Time
	// FSType returns the statfs f_type of the file system holding path.
	FSType func(path string) (int64, error)
	// ClockSynced reports whether the kernel clock is synchronized
	// (by NTP, chrony, systemd-timesyncd).
	ClockSynced func() (bool, error)
	// ProbeNetNS exercises kernel features in a throwaway network
	// namespace. It is only called when Euid is 0.
	ProbeNetNS func(ctx context.Context) NetNSProbe
}

// NewEnv returns the real host.
func NewEnv() *Env {
	return &Env{
		Cmd:         ExecCommander{},
		Euid:        os.Geteuid,
		Now:         time.Now,
		FSType:      statfsType,
		ClockSynced: kernelClockSynced,
		ProbeNetNS:  probeNetNS,
	}
}

// path maps an absolute host path into Root.
func (e *Env) path(p string) string {
	if e.Root == "" {
		return p
	}
	return filepath.Join(e.Root, p)
}

// TestImage is the locally built image the tests and the demo job use.
const TestImage = "airlock-test:busybox"

// Options say what to check.
type Options struct {
	// ConfigPath is the configuration file; a missing file is a warning
	// (the defaults apply) unless ConfigRequired.
	ConfigPath     string
	ConfigRequired bool
	// StateDir, when set, overrides the configuration's state_dir.
	StateDir string
	// KeyFiles are file names inside the state directory that hold keys
	// (secrets.KeyFile, audit.KeyFile); none may be wider than 0600.
	KeyFiles []string
	// TestImage is reported on (info only); empty skips that check.
	TestImage string
	// BuildTime is when the binary was built; a clock before it is
	// wrong. Zero skips that part of the clock check.
	BuildTime time.Time
}

// Run runs every check and returns the results in a stable order. It
// never stops at a failure: an admin wants the whole list at once.
func Run(ctx context.Context, e *Env, o Options) []Result {
	cfgRes, cfg := checkConfig(e, o.ConfigPath, o.ConfigRequired)
	if o.StateDir != "" {
		cfg.StateDir = o.StateDir
	}
	rs := []Result{cfgRes, checkConcurrency(cfg), checkRoot(e), checkNetNS(e)}
	rs = append(rs, checkKernel(ctx, e)...)
	rs = append(rs, checkIPTablesTools(e), checkIPTablesBackend(ctx, e), checkFirewall(ctx, e, cfg.Network.Firewall))
	rs = append(rs, checkDocker(ctx, cfg.Docker.Host, o.TestImage)...)
	rs = append(rs, checkContainerd(ctx, e, cfg.Containerd, cfg.ExecutorName() == config.ExecutorContainerd)...)
	rs = append(rs, checkStateDir(e, cfg.StateDir))
	for _, name := range o.KeyFiles {
		rs = append(rs, checkKeyFile(e, filepath.Join(cfg.StateDir, name)))
	}
	rs = append(rs, checkRuntimeDir(e, cfg.RuntimeDir), checkClock(e, o.BuildTime))
	return rs
}

// Failed reports whether any result is a Fail.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

func checkRoot(e *Env) Result {
	r := Result{Name: "root"}
	if uid := e.Euid(); uid != 0 {
		r.Status = Fail
		r.Detail = fmt.Sprintf("running as uid %d", uid)
		r.Fix = "run as root (sudo airlock doctor); the service runs as root to manage network namespaces and iptables"
		return r
	}
	r.Detail = "running as root"
	return r
}

// checkConfig loads and validates the configuration. It always returns a
// configuration for the other checks: the defaults when it can't load.
func checkConfig(e *Env, path string, required bool) (Result, *config.Config) {
	r := Result{Name: "config"}
	if path == "" {
		path = config.DefaultPath
	}
	full := e.path(path)
	st, err := os.Stat(full)
	if os.IsNotExist(err) {
		r.Status = Warn
		if required {
			r.Status = Fail
		}
		r.Detail = path + " does not exist; the defaults apply"
		r.Fix = "install -m 0600 testdata/config.example.toml " + path + " (from the source tree) and edit it"
		return r, config.Defaults()
	}
	cfg, err := config.Load(full, false)
	if err != nil {
		r.Status = Fail
		r.Detail = oneLine(err.Error())
		r.Fix = "correct " + path + " (the checks below use the defaults)"
		return r, config.Defaults()
	}
	if st.Mode().Perm()&0o077 != 0 {
		r.Status = Warn
		r.Detail = fmt.Sprintf("%s parses, but its mode is %04o and it holds runner tokens", path, st.Mode().Perm())
		r.Fix = "chmod 0600 " + path
		return r, cfg
	}
	r.Detail = path + " parses and validates"
	return r, cfg
}

// oneLine joins a multi-line error (errors.Join) with "; ".
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }
