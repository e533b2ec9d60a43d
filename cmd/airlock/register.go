package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/gitlab"
)

func init() {
	addCommand(newRegisterCmd)
	addCommand(newUnregisterCmd)
	addCommand(newVerifyCmd)
}

// registerTimeout bounds each registration command's API calls.
const registerTimeout = 2 * time.Minute

type registerOptions struct {
	url               string
	token             string
	registrationToken string
	name              string
	limit             int
	tags              []string
	runUntagged       bool
	locked            bool
	protectedOnly     bool
	maximumTimeout    time.Duration
	paused            bool
	executor          string
}

func newRegisterCmd(g *globals) *cobra.Command {
	var o registerOptions
	cmd := &cobra.Command{
		Use:   "register --url URL --token glrt-...",
		Short: "Add a GitLab runner to the configuration (register github: a GitHub runner)",
		Long: `Verify a runner authentication token (glrt-..., created in GitLab under
Settings > CI/CD > Runners > New project runner) with GitLab, announcing
this machine's system id, and add a [[runners]] entry to the configuration
file (written with mode 0600: it holds the token).

The token can also come from the environment (AIRLOCK_RUNNER_TOKEN), which
keeps it out of the process list and shell history.

--registration-token uses GitLab's deprecated registration flow (a
registration token; tags, run-untagged, locked, protected-only, paused and
maximum-timeout apply only there: with a glrt- token they are set in GitLab).`,
		Example: `  AIRLOCK_RUNNER_TOKEN=glrt-... airlock register --url https://gitlab.example.com --name build-1
  airlock register --url https://gitlab.example.com --token glrt-... --limit 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("token") {
				o.token = os.Getenv("AIRLOCK_RUNNER_TOKEN")
			}
			if !cmd.Flags().Changed("registration-token") {
				o.registrationToken = os.Getenv("AIRLOCK_REGISTRATION_TOKEN")
			}
			return runRegister(cmd, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "GitLab URL, e.g. https://gitlab.example.com (required)")
	f.StringVar(&o.token, "token", "", "runner authentication token glrt-... (env AIRLOCK_RUNNER_TOKEN)")
	f.StringVar(&o.registrationToken, "registration-token", "", "legacy registration token (env AIRLOCK_REGISTRATION_TOKEN)")
	f.StringVar(&o.name, "name", "", "name of the [[runners]] entry (default: the host name)")
	f.IntVar(&o.limit, "limit", 0, "jobs this runner may run at once (0: only the global concurrent limit)")
	f.StringSliceVar(&o.tags, "tag-list", nil, "legacy flow: tags, comma-separated")
	f.BoolVar(&o.runUntagged, "run-untagged", false, "legacy flow: also pick up untagged jobs")
	f.BoolVar(&o.locked, "locked", true, "legacy flow: lock the runner to its project")
	f.BoolVar(&o.protectedOnly, "access-level-ref-protected", false, "legacy flow: run jobs of protected refs only")
	f.DurationVar(&o.maximumTimeout, "maximum-timeout", 0, "legacy flow: ceiling for job timeouts, e.g. 2h")
	f.BoolVar(&o.paused, "paused", false, "legacy flow: register the runner paused")
	f.StringVar(&o.executor, "executor", "", "executor that runs this runner's jobs: docker or containerd (default: the configuration's executor, else docker)")
	for _, sub := range registerSubcommands {
		cmd.AddCommand(sub(g))
	}
	return cmd
}

// loadRegistration loads the configuration for the registration commands:
// a missing file is fine (register creates it).
func loadRegistration(g *globals) (*config.Config, error) {
	cfg, err := config.Load(g.ConfigPath, true)
	if err != nil {
		return nil, err
	}
	g.configure(cfg)
	if g.StateDir != "" {
		cfg.StateDir = g.StateDir
	}
	return cfg, nil
}

func gitlabClient(g *globals, url string, opts ...gitlab.Option) (*gitlab.Client, error) {
	return gitlab.New(url, append([]gitlab.Option{gitlab.WithLogger(g.Logger().Named("gitlab")), gitlab.WithVersion(version, commit)}, opts...)...)
}

func runRegister(cmd *cobra.Command, g *globals, o registerOptions) error {
	switch {
	case o.url == "":
		return &exitError{code: 2, msg: "--url is required"}
	case o.token == "" && o.registrationToken == "":
		return &exitError{code: 2, msg: "--token (or AIRLOCK_RUNNER_TOKEN) is required: create a runner in GitLab and use its glrt- token"}
	case o.token != "" && o.registrationToken != "":
		return &exitError{code: 2, msg: "give either --token or --registration-token, not both"}
	case o.limit < 0:
		return &exitError{code: 2, msg: "--limit must not be negative"}
	case o.executor != "" && o.executor != "docker" && o.executor != "containerd":
		return &exitError{code: 2, msg: fmt.Sprintf("--executor %q: must be docker or containerd", o.executor)}
	}
	cfg, err := loadRegistration(g)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if o.executor == "" {
		o.executor = cfg.ExecutorName()
	}
	if o.name == "" {
		if o.name, err = os.Hostname(); err != nil || o.name == "" {
			o.name = "airlock"
		}
	}
	for _, r := range cfg.Runners {
		if r.Name == o.name {
			return &exitError{code: 2, msg: fmt.Sprintf("a runner named %q is already in %s: pick another --name or `airlock unregister --name %s` first", o.name, g.ConfigPath, o.name)}
		}
	}
	// GitLab is told the executor this entry will run its jobs with.
	c, err := gitlabClient(g, o.url, gitlab.WithExecutor(o.executor, "sh"))
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), registerTimeout)
	defer cancel()
	var creds gitlab.RunnerCredentials
	if o.registrationToken != "" {
		creds, err = c.Register(ctx, o.registrationToken, gitlab.RegisterOptions{
			Description:    o.name,
			Tags:           o.tags,
			RunUntagged:    o.runUntagged,
			Locked:         o.locked,
			ProtectedOnly:  o.protectedOnly,
			MaximumTimeout: o.maximumTimeout,
			Paused:         o.paused,
		})
	} else {
		var sysID string
		if sysID, err = gitlab.SystemID(cfg.StateDir); err != nil {
			return err
		}
		creds, err = c.Verify(ctx, o.token, sysID)
	}
	if err != nil {
		return err
	}
	cfg.Runners = append(cfg.Runners, gitlab.RunnerConfig{
		Name:            o.name,
		URL:             c.URL(),
		ID:              creds.ID,
		Token:           creds.Token,
		TokenObtainedAt: time.Now().UTC().Truncate(time.Second),
		TokenExpiresAt:  creds.TokenExpiresAt,
		Executor:        o.executor,
		Limit:           o.limit,
	})
	if errs := cfg.Validate(); len(errs) > 0 {
		return fmt.Errorf("registering runner: the configuration would be invalid: %w", errors.Join(errs...))
	}
	if err := cfg.Save(g.ConfigPath); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "registered runner %q (id %d) with %s; added it to %s\n", o.name, creds.ID, c.URL(), g.ConfigPath)
	return nil
}

func newUnregisterCmd(g *globals) *cobra.Command {
	var name string
	var all bool
	cmd := &cobra.Command{
		Use:   "unregister (--name NAME | --all)",
		Short: "Remove GitLab runners from GitLab and the configuration (unregister github: a GitHub runner)",
		Long: `Remove runners from the configuration file, and from GitLab: a runner made
with a glrt- token loses this machine as one of its managers (delete the
runner itself in GitLab's UI); a runner registered with the legacy flow is
deleted. A runner GitLab no longer knows is removed from the file anyway.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (name == "") == !all {
				return &exitError{code: 2, msg: "give --name NAME or --all"}
			}
			return runUnregister(cmd, g, name, all)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the [[runners]] entry to remove")
	cmd.Flags().BoolVar(&all, "all", false, "remove every runner")
	for _, sub := range unregisterSubcommands {
		cmd.AddCommand(sub(g))
	}
	return cmd
}

func runUnregister(cmd *cobra.Command, g *globals, name string, all bool) error {
	cfg, err := config.Load(g.ConfigPath, false)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	g.configure(cfg)
	if g.StateDir != "" {
		cfg.StateDir = g.StateDir
	}
	sysID, err := gitlab.SystemID(cfg.StateDir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), registerTimeout)
	defer cancel()
	var keep []gitlab.RunnerConfig
	var errs []error
	found := false
	for _, r := range cfg.Runners {
		if !all && r.Name != name {
			keep = append(keep, r)
			continue
		}
		found = true
		if err := unregisterOne(ctx, g, r, sysID); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r, err))
			keep = append(keep, r)
			continue
		}
		fmt.Fprintf(cmd.OutOrStdout(), "unregistered runner %q\n", r.Name)
	}
	if !found {
		return &exitError{code: 2, msg: fmt.Sprintf("no runner named %q in %s", name, g.ConfigPath)}
	}
	cfg.Runners = keep
	if err := cfg.Save(g.ConfigPath); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func unregisterOne(ctx context.Context, g *globals, r gitlab.RunnerConfig, sysID string) error {
	c, err := gitlabClient(g, r.URL)
	if err != nil {
		return err
	}
	if strings.HasPrefix(r.Token, "glrt-") {
		err = c.UnregisterManager(ctx, r.Token, sysID)
	} else {
		err = c.Unregister(ctx, r.Token)
	}
	if errors.Is(err, gitlab.ErrTokenInvalid) {
		g.Logger().Warn("GitLab no longer knows the runner; removing it from the configuration", "runner", r.Name)
		return nil
	}
	return err
}

func newVerifyCmd(g *globals) *cobra.Command {
	var del bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every configured GitLab runner's token with GitLab",
		Long: `Check each [[runners]] entry's token with GitLab (POST /runners/verify).
With --delete, entries GitLab refuses are removed from the configuration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd, g, del)
		},
	}
	cmd.Flags().BoolVar(&del, "delete", false, "remove runners whose token GitLab refuses")
	return cmd
}

func runVerify(cmd *cobra.Command, g *globals, del bool) error {
	cfg, err := config.Load(g.ConfigPath, false)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	g.configure(cfg)
	if g.StateDir != "" {
		cfg.StateDir = g.StateDir
	}
	if len(cfg.Runners) == 0 && len(cfg.GitHub) == 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("no [[runners]] or [[github]] in %s: run `airlock register` first", g.ConfigPath)}
	}
	sysID, err := gitlab.SystemID(cfg.StateDir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), registerTimeout)
	defer cancel()
	out := cmd.OutOrStdout()
	var keep []gitlab.RunnerConfig
	bad := 0
	for _, r := range cfg.Runners {
		ok := verifyOne(ctx, g, out, r, sysID)
		if ok || !del {
			keep = append(keep, r)
		}
		if !ok {
			bad++
		}
	}
	bad += verifyGitHub(ctx, cfg, out)
	if removed := len(cfg.Runners) - len(keep); del && removed > 0 {
		cfg.Runners = keep
		if err := cfg.Save(g.ConfigPath); err != nil {
			return err
		}
		fmt.Fprintf(out, "removed %d runner(s) from %s\n", removed, g.ConfigPath)
	}
	if bad > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("%d runner(s) failed verification", bad)}
	}
	return nil
}

func verifyOne(ctx context.Context, g *globals, out io.Writer, r gitlab.RunnerConfig, sysID string) bool {
	executor := r.Executor
	if executor == "" {
		executor = "docker"
	}
	c, err := gitlabClient(g, r.URL, gitlab.WithExecutor(executor, "sh"))
	if err == nil {
		_, err = c.Verify(ctx, r.Token, sysID)
	}
	if err != nil {
		fmt.Fprintf(out, "runner %q: %v\n", r.Name, err)
		return false
	}
	fmt.Fprintf(out, "runner %q: valid\n", r.Name)
	return true
}
