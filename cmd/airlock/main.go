// Command airlock is a self-hosted CI runner with built-in credential
// isolation. The commands here parse flags, build objects and call one
// function each; the logic lives in the packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
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
	LogLevel   string
	LogFormat  string
	log        hclog.Logger
}

// Logger returns the runner logger (stderr; job output goes elsewhere).
func (g *globals) Logger() hclog.Logger {
	if g.log == nil {
		g.log = hclog.New(&hclog.LoggerOptions{
			Name:       "airlock",
			Level:      hclog.LevelFromString(g.LogLevel),
			JSONFormat: g.LogFormat == "json",
			Output:     os.Stderr,
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
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.ConfigPath, "config", envOr("AIRLOCK_CONFIG", "/etc/airlock/config.toml"), "configuration file (env AIRLOCK_CONFIG)")
	pf.StringVar(&g.StateDir, "state-dir", envOr("AIRLOCK_STATE_DIR", ""), "state directory (env AIRLOCK_STATE_DIR; default from config, else /var/lib/airlock)")
	pf.StringVar(&g.LogLevel, "log-level", envOr("AIRLOCK_LOG_LEVEL", "info"), "runner log level: trace, debug, info, warn, error")
	pf.StringVar(&g.LogFormat, "log-format", envOr("AIRLOCK_LOG_FORMAT", "text"), "runner log format: text or json")
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
