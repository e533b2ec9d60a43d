// Command airlock is a self-hosted CI runner with built-in credential
// isolation. The commands here parse flags, build objects and call one
// function each; the logic lives in the packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/runner/config"
)

// Set by the linker (see Makefile).
var (
	version = "dev"
	commit  = "unknown"
)

// globals are the options every command shares.
type globals struct {
	ConfigPath string
	StateDir   string
	// LogLevel and LogFormat come from --log-level/--log-format (or
	// AIRLOCK_LOG_LEVEL/AIRLOCK_LOG_FORMAT); "" takes the configuration's
	// log_level/log_format (see configure), else info and text.
	LogLevel  string
	LogFormat string
	log       hclog.Logger
	logOut    io.Writer // nil: stderr
}

// configure applies the configuration's log_level and log_format where no
// flag or environment variable set them. Commands call it right after
// loading the configuration, before the first Logger.
func (g *globals) configure(cfg *config.Config) {
	if g.LogLevel == "" {
		g.LogLevel = cfg.LogLevel
	}
	if g.LogFormat == "" {
		g.LogFormat = cfg.LogFormat
	}
	g.log = nil
}

// checkLogFlags rejects a bad --log-level or --log-format before any
// command runs.
func (g *globals) checkLogFlags() error {
	switch g.LogLevel {
	case "", "trace", "debug", "info", "warn", "error":
	default:
		return &exitError{code: 2, msg: fmt.Sprintf("--log-level %q: must be trace, debug, info, warn or error", g.LogLevel)}
	}
	switch g.LogFormat {
	case "", "text", "json":
	default:
		return &exitError{code: 2, msg: fmt.Sprintf("--log-format %q: must be text or json", g.LogFormat)}
	}
	return nil
}

// Logger returns the runner logger (stderr; job output goes elsewhere).
func (g *globals) Logger() hclog.Logger {
	if g.log == nil {
		level := g.LogLevel
		if level == "" {
			level = "info"
		}
		out := g.logOut
		if out == nil {
			out = os.Stderr
		}
		g.log = hclog.New(&hclog.LoggerOptions{
			Name:       "airlock",
			Level:      hclog.LevelFromString(level),
			JSONFormat: g.LogFormat == "json",
			Output:     out,
		})
	}
	return g.log
}

// commands lists the constructors of the top-level subcommands; each file
// of this package adds its own in init so that files don't collide.
var commands []func(*globals) *cobra.Command

func addCommand(f func(*globals) *cobra.Command) { commands = append(commands, f) }

// exitError carries a process exit code out of a command (for example the
// job's exit code from `airlock exec`). Its message, if any, is printed.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "airlock",
		Short: "A CI runner that isolates every job's network and credentials",
		Long: `Airlock runs CI jobs (GitLab, GitHub, local job files) in hardened containers.
Each job gets its own network namespace that can reach nothing but the
runner's per-job egress gateway, receives only the credentials an admin
granted to its repository, ref and environment (revoked when it ends), has
every secret masked in its output, and leaves a tamper-evident audit trail.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return g.checkLogFlags()
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.ConfigPath, "config", envOr("AIRLOCK_CONFIG", "/etc/airlock/config.toml"), "configuration file (env AIRLOCK_CONFIG)")
	pf.StringVar(&g.StateDir, "state-dir", envOr("AIRLOCK_STATE_DIR", ""), "state directory (env AIRLOCK_STATE_DIR; default from config, else /var/lib/airlock)")
	pf.StringVar(&g.LogLevel, "log-level", envOr("AIRLOCK_LOG_LEVEL", ""), "runner log level: trace, debug, info, warn, error (env AIRLOCK_LOG_LEVEL; default from config, else info)")
	pf.StringVar(&g.LogFormat, "log-format", envOr("AIRLOCK_LOG_FORMAT", ""), "runner log format: text or json (env AIRLOCK_LOG_FORMAT; default from config, else text)")
	for _, f := range commands {
		root.AddCommand(f(g))
	}
	return root
}

func main() {
	err := newRootCmd().ExecuteContext(context.Background())
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "airlock:", ee.msg)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "airlock:", err)
	os.Exit(1)
}
