package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/gitlab"
)

func init() { addCommand(newRunCmd) }

func newRunCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run the agent: take jobs from GitLab and run them isolated",
		Long: `Run the agent (the service systemd starts): poll every configured GitLab
runner for jobs within the concurrent and per-runner limits, run each in a
hardened container with its own network and credentials, stream its log and
report its state. On start, jobs a crash interrupted are cleaned up and
reported failed. Metrics are served on listen_address at /metrics.

SIGTERM or SIGINT drains: no new jobs; running jobs get shutdown_timeout to
finish, then they are aborted (torn down, credentials revoked) and
reported. A second signal aborts them at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(g.ConfigPath, false)
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			if g.StateDir != "" {
				cfg.StateDir = g.StateDir
			}
			if len(cfg.Runners) == 0 {
				return &exitError{code: 2, msg: fmt.Sprintf("no [[runners]] in %s: run `airlock register` first", g.ConfigPath)}
			}
			return runAgent(cmd.Context(), cfg, g.Logger())
		},
	}
}

// runAgent builds the runner and the agent and runs the agent until a
// signal drains it.
func runAgent(parent context.Context, cfg *config.Config, log hclog.Logger) (err error) {
	r, err := runner.Open(parent, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := r.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing runner: %w", cerr))
		}
	}()
	m := runner.NewMetrics()
	r.SetMetrics(m)

	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	metricsDone := make(chan error, 1)
	if cfg.ListenAddress != "" {
		ready := make(chan net.Addr, 1)
		go func() {
			metricsDone <- runner.ServeMetrics(ctx, cfg.ListenAddress, m, log, func(a net.Addr) { ready <- a })
		}()
		select {
		case <-ready:
		case err := <-metricsDone:
			return err
		}
	} else {
		metricsDone <- nil
	}

	a, err := runner.NewAgent(runner.AgentConfig{
		Runners:         cfg.Runners,
		Concurrent:      cfg.Concurrent,
		CheckInterval:   cfg.CheckInterval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		StateDir:        cfg.StateDir,
		DefaultImage:    cfg.Docker.Image,
		Version:         version,
		Revision:        commit,
		Metrics:         m,
		RecoverLocal:    r.Recover,
		TokenRotated:    saveRotatedToken(cfg.Path()),
		Logger:          log,
	}, r)
	if err != nil {
		return err
	}

	// First signal: drain (cancel the run context). Second: abort.
	runCtx, drain := context.WithCancel(ctx)
	defer drain()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for n := 1; ; n++ {
			select {
			case s := <-sigs:
				if n == 1 {
					log.Info("signal received; draining (send it again to abort running jobs)", "signal", s.String())
					drain()
					continue
				}
				log.Warn("second signal; aborting running jobs", "signal", s.String())
				a.Abort()
				return
			case <-ctx.Done():
				return
			}
		}
	}()

	runErr := a.Run(runCtx)
	cancel() // stops the metrics server
	return errors.Join(runErr, <-metricsDone)
}

// saveRotatedToken returns the agent's TokenRotated: it writes a runner's
// new token into the configuration file (re-read, so that edits made
// since the start are kept).
func saveRotatedToken(path string) func(gitlab.RunnerConfig) error {
	var mu sync.Mutex
	return func(rc gitlab.RunnerConfig) error {
		mu.Lock()
		defer mu.Unlock()
		cfg, err := config.Load(path, false)
		if err != nil {
			return fmt.Errorf("saving rotated token of runner %q: %w", rc.Name, err)
		}
		for i := range cfg.Runners {
			if cfg.Runners[i].Name == rc.Name && cfg.Runners[i].URL == rc.URL {
				cfg.Runners[i].Token = rc.Token
				cfg.Runners[i].TokenObtainedAt = rc.TokenObtainedAt
				cfg.Runners[i].TokenExpiresAt = rc.TokenExpiresAt
				return cfg.Save(path)
			}
		}
		return fmt.Errorf("saving rotated token of runner %q: the runner is no longer in %s", rc.Name, path)
	}
}
