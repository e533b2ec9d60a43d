package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/internal/wiring"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/cache"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/github"
	"github.com/airlock-ci/airlock/runner/github/autoscale"
	"github.com/airlock-ci/airlock/runner/gitlab"
)

func init() { addCommand(newRunCmd) }

func newRunCmd(g *globals) *cobra.Command {
	var jitFile string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: take jobs from GitLab and GitHub and run them isolated",
		Long: `Run the agent (the service systemd starts): poll every configured GitLab
runner, GitHub registration and autoscaler for jobs within the concurrent
and per-runner limits, run each in a hardened container with its own
network and credentials, stream its log and report its state. On start, jobs a crash interrupted are cleaned up and
reported failed. Metrics are served on listen_address at /metrics.

SIGTERM or SIGINT drains: no new jobs; running jobs get shutdown_timeout to
finish, then they are aborted (torn down, credentials revoked) and
reported. A second signal aborts them at once.

--github-jitconfig-file F runs one GitHub just-in-time runner from its
encoded config (F, or - for stdin; never on the command line): exactly one
job, then the command exits. Other configured runners are not served.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(g.ConfigPath, false)
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			g.configure(cfg)
			if g.StateDir != "" {
				cfg.StateDir = g.StateDir
			}
			var jit *github.Registration
			if jitFile != "" {
				if jit, err = readJITConfig(jitFile, cmd.InOrStdin()); err != nil {
					return &exitError{code: 2, msg: err.Error()}
				}
			}
			if len(cfg.Runners) == 0 && len(cfg.GitHub) == 0 && len(cfg.Autoscale) == 0 && jit == nil {
				return &exitError{code: 2, msg: fmt.Sprintf("no [[runners]], [[github]] or [[autoscale]] in %s: run `airlock register` first", g.ConfigPath)}
			}
			return runAgent(cmd.Context(), cfg, g.Logger(), jit)
		},
	}
	cmd.Flags().StringVar(&jitFile, "github-jitconfig-file", "", "run one job as a GitHub JIT runner from this encoded config (- for stdin)")
	return cmd
}

// runAgent builds the runner and the agent and runs the agent until a
// signal drains it.
func runAgent(parent context.Context, cfg *config.Config, log hclog.Logger, jit *github.Registration) (err error) {
	r, err := wiring.Open(parent, cfg, log)
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
	var scalers []*autoscale.Autoscaler
	var hooks map[string]http.Handler
	var scalersDone sync.WaitGroup
	if jit == nil {
		var stopTrails func()
		if scalers, hooks, stopTrails, err = autoscalers(cfg, r, m, log); err != nil {
			return err
		}
		// Before r.Close (deferred earlier, so run later): the autoscalers
		// stop deciding (the webhook server has stopped by the time runAgent
		// returns normally), then their trails are sealed.
		defer func() {
			cancel()
			scalersDone.Wait()
			stopTrails()
		}()
	}
	metricsDone := make(chan error, 1)
	if cfg.ListenAddress != "" {
		ready := make(chan net.Addr, 1)
		go func() {
			metricsDone <- runner.ServeMetricsWith(ctx, cfg.ListenAddress, m, log, func(a net.Addr) { ready <- a }, hooks)
		}()
		select {
		case <-ready:
		case err := <-metricsDone:
			return err
		}
	} else {
		metricsDone <- nil
	}

	// First signal: drain (cancel the run context). Second: abort.
	runCtx, drain := context.WithCancel(ctx)
	defer drain()
	var coords []runner.Coordinator
	if jit == nil {
		if coords, err = gitlabCoordinators(cfg, m, log); err != nil {
			return err
		}
	}
	ghCoords, err := githubCoordinators(cfg, jit, m, log)
	if err != nil {
		return err
	}
	defer closeGitHub(ghCoords, log)
	for _, c := range ghCoords {
		if jit != nil {
			coords = append(coords, oneShot{Coordinator: c, stop: drain})
		} else {
			coords = append(coords, c)
		}
	}
	for _, s := range scalers {
		coords = append(coords, s)
		scalersDone.Go(func() { s.Run(ctx) }) // reconcile and poll until the agent stops
	}
	a, err := runner.NewAgent(runner.AgentConfig{
		Coordinators:    coords,
		Concurrent:      cfg.Concurrent,
		CheckInterval:   cfg.CheckInterval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		ReportTimeout:   cfg.ReportTimeout,
		StateDir:        cfg.StateDir,
		DefaultImage:    cfg.DefaultImage(),
		Metrics:         m,
		RecoverLocal:    r.Recover,
		Logger:          log,
	}, r)
	if err != nil {
		return err
	}
	if len(cfg.Pool.Images) > 0 || cfg.Pool.Recent > 0 || cfg.Pool.Networks > 0 {
		// A pool that cannot start leaves jobs to run cold; say why.
		// Refills stay within concurrent and leave a job's memory free.
		pc := runner.PoolConfig{Sizes: cfg.Pool.Sizes(), Recent: cfg.Pool.Recent, RecentSize: cfg.Pool.Size, Networks: cfg.Pool.Networks,
			Concurrent: cfg.Concurrent, MinAvailable: cfg.JobMemory(), HistoryFile: filepath.Join(cfg.StateDir, "pool-recent.json")}
		if _, err := r.StartPool(ctx, pc); err != nil {
			log.Error("warm sandboxes are off", "error", err)
		} else {
			log.Info("keeping warm sandboxes", "images", cfg.Pool.Images, "recent", cfg.Pool.Recent, "size", max(cfg.Pool.Size, 1),
				"networks", cfg.Pool.Networks)
		}
	}

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

// gitlabCoordinators makes one coordinator per [[runners]] entry.
func gitlabCoordinators(cfg *config.Config, m *runner.Metrics, log hclog.Logger) ([]runner.Coordinator, error) {
	systemID, err := gitlab.SystemID(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	// Staging copies and archives of jobs a previous run left: none runs now.
	tmpDir := filepath.Join(cfg.CacheDir(), "tmp")
	if err := errors.Join(os.RemoveAll(tmpDir), os.MkdirAll(tmpDir, 0o700)); err != nil {
		return nil, fmt.Errorf("preparing %s: %w", tmpDir, err)
	}
	var store gitlab.CacheStore
	if !cfg.Cache.Disabled {
		max, err := cfg.CacheMaxBytes()
		if err != nil {
			return nil, err
		}
		cs, err := cache.New(cfg.CacheDir(), max)
		if err != nil {
			return nil, err
		}
		store = cs
	}
	var out []runner.Coordinator
	for i, rc := range cfg.Runners {
		executor, err := servedExecutor(cfg, rc)
		if err != nil {
			return nil, &exitError{code: 2, msg: fmt.Sprintf("runners[%d].executor: %v", i, err)}
		}
		c, err := gitlab.NewCoordinator(gitlab.CoordinatorConfig{
			Runner:       rc,
			SystemID:     systemID,
			Executor:     executor,
			Version:      version,
			Revision:     commit,
			Observer:     m.CoordinatorRequests(rc.Name),
			TokenRotated: saveRotatedToken(cfg.Path()),
			Cache:        store,
			GitCacheDir:  filepath.Join(cfg.CacheDir(), "git"),
			VaultServers: cfg.GitLabSecrets.VaultServers,
			TempDir:      tmpDir,
			Logger:       log,
		})
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// servedExecutor is the executor that runs the jobs of rc, which GitLab is
// told: the agent's one executor (config validation refused an entry that
// names another).
func servedExecutor(cfg *config.Config, rc gitlab.RunnerConfig) (string, error) {
	name := cfg.ExecutorName()
	if rc.Executor != "" && rc.Executor != name {
		return "", fmt.Errorf("%q, but the agent runs every job with %s", rc.Executor, name)
	}
	return name, nil
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
