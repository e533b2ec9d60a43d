package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/github"
	"github.com/airlock-ci/airlock/secrets"
)

type githubRegisterOptions struct {
	url, token, name, group, jitFile string
	labels                           []string
	ephemeral, replace               bool
}

func newRegisterGitHubCmd(g *globals) *cobra.Command {
	var o githubRegisterOptions
	cmd := &cobra.Command{
		Use:   "github --url https://github.com/ORG[/REPO] --token REGISTRATION_TOKEN",
		Short: "Register this host as a GitHub Actions self-hosted runner",
		Long: `Register a self-hosted runner with GitHub like the official runner's
config.sh: a 2048-bit RSA key is generated here and only its public half is
sent. The private key and the OAuth client id are sealed in the state
store (not in config.toml); a [[github]] entry is added to the
configuration. The registration token (Settings > Actions > Runners > New
self-hosted runner; valid for an hour) is used once and not kept; it can
come from AIRLOCK_GITHUB_TOKEN instead of --token.

--jitconfig-file stores a just-in-time runner's encoded config (from the
generate-jitconfig API; "-" reads stdin) instead: it runs one job, then
GitHub deletes it.`,
		Example: `  AIRLOCK_GITHUB_TOKEN=AABBC... airlock register github --url https://github.com/acme/app --labels airlock,linux
  airlock register github --url https://github.com/acme --token AABBC... --name build-1 --group ci`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("token") {
				o.token = os.Getenv("AIRLOCK_GITHUB_TOKEN")
			}
			return runRegisterGitHub(cmd, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "GitHub organization or repository URL (required)")
	f.StringVar(&o.token, "token", "", "runner registration token (env AIRLOCK_GITHUB_TOKEN)")
	f.StringVar(&o.name, "name", "", "runner name on GitHub and of the [[github]] entry (default: the host name)")
	f.StringSliceVar(&o.labels, "labels", []string{"airlock"}, "custom labels, comma-separated (self-hosted, Linux and X64 are added)")
	f.StringVar(&o.group, "group", "", "runner group (default: the default group)")
	f.BoolVar(&o.ephemeral, "ephemeral", false, "take one job, then GitHub deletes the runner")
	f.BoolVar(&o.replace, "replace", false, "replace a runner of the same name")
	f.StringVar(&o.jitFile, "jitconfig-file", "", "store a JIT runner's encoded config from this file (- for stdin) instead of registering")
	return cmd
}

// registerSubcommands and unregisterSubcommands are the coordinators'
// own register/unregister commands (airlock register github).
var registerSubcommands, unregisterSubcommands []func(*globals) *cobra.Command

func init() {
	registerSubcommands = append(registerSubcommands, newRegisterGitHubCmd)
	unregisterSubcommands = append(unregisterSubcommands, newUnregisterGitHubCmd)
}

// readJITConfig reads an encoded JIT config from a file or stdin ("-").
func readJITConfig(path string, stdin io.Reader) (*github.Registration, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading JIT config: %w", err)
	}
	return github.ParseJITConfig(string(b))
}

func runRegisterGitHub(cmd *cobra.Command, g *globals, o githubRegisterOptions) error {
	cfg, err := loadRegistration(g)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if o.name == "" {
		if o.name, err = os.Hostname(); err != nil {
			return &exitError{code: 2, msg: "--name is required (no host name)"}
		}
	}
	for _, e := range cfg.GitHub {
		if e.Name == o.name {
			return &exitError{code: 2, msg: fmt.Sprintf("%s already has a [[github]] entry named %q: pick another --name or `airlock unregister github --name %s`", g.ConfigPath, o.name, o.name)}
		}
	}
	var reg *github.Registration
	if o.jitFile != "" {
		if reg, err = readJITConfig(o.jitFile, cmd.InOrStdin()); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		if o.url == "" {
			o.url = reg.GitHubURL
		}
	} else {
		switch {
		case o.url == "":
			return &exitError{code: 2, msg: "--url is required"}
		case o.token == "":
			return &exitError{code: 2, msg: "--token (or AIRLOCK_GITHUB_TOKEN) is required: GitHub > Settings > Actions > Runners > New self-hosted runner shows it"}
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), registerTimeout)
		defer cancel()
		reg, err = github.Register(ctx, &http.Client{Timeout: registerTimeout}, github.RegisterOptions{
			URL: o.url, Token: o.token, Name: o.name, Labels: o.labels, Group: o.group, Ephemeral: o.ephemeral, Replace: o.replace})
		if err != nil {
			return err
		}
	}
	entry := config.GitHubRunner{Name: o.name, URL: o.url, Labels: o.labels, Limit: 1, RunnerID: reg.AgentID, Ephemeral: reg.Ephemeral}
	if errs := entry.Validate("github"); len(errs) > 0 {
		return &exitError{code: 2, msg: errors.Join(errs...).Error()}
	}
	sealed, err := reg.MarshalSecret()
	if err != nil {
		return err
	}
	st, err := secrets.Open(cfg.StateDir, secrets.OpenOptions{})
	if err != nil {
		return err
	}
	err = st.PutRunnerCredential(github.CredentialName(o.name), sealed)
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	cfg.GitHub = append(cfg.GitHub, entry)
	if err := cfg.Save(g.ConfigPath); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "registered GitHub runner %q (id %d) for %s; its key is sealed in %s\n", o.name, reg.AgentID, o.url, cfg.StateDir)
	return nil
}

func newUnregisterGitHubCmd(g *globals) *cobra.Command {
	var name, token string
	cmd := &cobra.Command{
		Use:   "github --name NAME --token REMOVE_TOKEN",
		Short: "Remove a GitHub runner from GitHub and from this host",
		Long: `Remove the runner from GitHub with a remove token (GitHub > Settings >
Actions > Runners > the runner > Remove shows one; or env
AIRLOCK_GITHUB_TOKEN), then delete its sealed key and its [[github]] entry.
A runner GitHub no longer knows is removed locally.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("token") {
				token = os.Getenv("AIRLOCK_GITHUB_TOKEN")
			}
			return runUnregisterGitHub(cmd, g, name, token)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the [[github]] entry to remove (required)")
	cmd.Flags().StringVar(&token, "token", "", "remove token (env AIRLOCK_GITHUB_TOKEN)")
	return cmd
}

func runUnregisterGitHub(cmd *cobra.Command, g *globals, name, token string) error {
	cfg, err := config.Load(g.ConfigPath, false)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if g.StateDir != "" {
		cfg.StateDir = g.StateDir
	}
	i := slices.IndexFunc(cfg.GitHub, func(e config.GitHubRunner) bool { return e.Name == name })
	if i < 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("no [[github]] entry named %q in %s", name, g.ConfigPath)}
	}
	st, err := secrets.Open(cfg.StateDir, secrets.OpenOptions{MustExist: true})
	if err != nil {
		return err
	}
	defer st.Close()
	reg, rerr := loadGitHubRegistration(st, cfg.GitHub[i])
	if rerr == nil && !reg.Ephemeral {
		if token == "" {
			return &exitError{code: 2, msg: "--token (or AIRLOCK_GITHUB_TOKEN) is required: a remove token from the runner's page on GitHub"}
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), registerTimeout)
		defer cancel()
		if err := github.Unregister(ctx, &http.Client{Timeout: registerTimeout}, reg, token); err != nil {
			return err
		}
	}
	if err := st.DeleteRunnerCredential(github.CredentialName(name)); err != nil {
		return err
	}
	cfg.GitHub = slices.Delete(cfg.GitHub, i, i+1)
	if err := cfg.Save(g.ConfigPath); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "removed GitHub runner %q\n", name)
	return nil
}

// loadGitHubRegistration reads an entry's sealed registration.
func loadGitHubRegistration(st *secrets.Store, e config.GitHubRunner) (*github.Registration, error) {
	b, err := st.RunnerCredential(github.CredentialName(e.Name))
	if err != nil {
		return nil, fmt.Errorf("GitHub runner %q: %w (register it again: airlock register github)", e.Name, err)
	}
	reg, err := github.UnmarshalRegistration(b)
	if err != nil {
		return nil, fmt.Errorf("GitHub runner %q: %w", e.Name, err)
	}
	if reg.GitHubURL == "" {
		reg.GitHubURL = e.URL
	}
	return reg, nil
}

// githubCoordinators makes one coordinator per [[github]] entry, or only
// the JIT runner when one is given (`airlock run --github-jitconfig-file`).
func githubCoordinators(cfg *config.Config, jit *github.Registration, m *runner.Metrics, log hclog.Logger) ([]*github.Coordinator, error) {
	mk := func(name string, reg *github.Registration) (*github.Coordinator, error) {
		obs := m.CoordinatorRequests("github:" + name)
		hc := github.ObservedClient(&http.Client{Timeout: 10 * time.Minute}, obs)
		return github.New(github.Config{Name: name, Registration: reg,
			Convert:  github.MessageConverter(cfg.DefaultImage(), reg.AgentName, hc, log.Named("github").With("runner", name)),
			Observer: obs, Logger: log.Named("github")})
	}
	if jit != nil {
		c, err := mk(firstNonEmptyString(jit.AgentName, "jit"), jit)
		if err != nil {
			return nil, err
		}
		return []*github.Coordinator{c}, nil
	}
	if len(cfg.GitHub) == 0 {
		return nil, nil
	}
	st, err := secrets.Open(cfg.StateDir, secrets.OpenOptions{Shared: true, MustExist: true})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var out []*github.Coordinator
	for _, e := range cfg.GitHub {
		reg, err := loadGitHubRegistration(st, e)
		if err != nil {
			return nil, err
		}
		c, err := mk(e.Name, reg)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func firstNonEmptyString(ss ...string) string {
	for _, s := range ss {
		if strings.TrimSpace(s) != "" {
			return s
		}
	}
	return ""
}

// oneShot is the JIT runner's coordinator as the agent sees it: once it is
// gone (its one job ran, or GitHub deleted it) the agent drains and exits.
type oneShot struct {
	*github.Coordinator
	stop func()
}

func (o oneShot) Acquire(ctx context.Context) (runner.Lease, error) {
	l, err := o.Coordinator.Acquire(ctx)
	switch {
	case errors.Is(err, github.ErrEphemeralDone):
		o.stop() // its one job ran: a normal end, not an error
		return nil, nil
	case errors.Is(err, github.ErrRegistrationGone):
		o.stop()
	}
	return l, err
}

// closeGitHub deletes the message sessions so that the runners show
// offline and the next start gets no session conflict.
func closeGitHub(cs []*github.Coordinator, log hclog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), registerTimeout)
	defer cancel()
	for _, c := range cs {
		if err := c.Close(ctx); err != nil {
			log.Warn("closing GitHub session", "coordinator", c.Name(), "error", err)
		}
	}
}

// verifyGitHub checks every [[github]] registration with an OAuth
// exchange; it returns how many failed.
func verifyGitHub(ctx context.Context, cfg *config.Config, out io.Writer) int {
	if len(cfg.GitHub) == 0 {
		return 0
	}
	st, err := secrets.Open(cfg.StateDir, secrets.OpenOptions{Shared: true, MustExist: true})
	if err != nil {
		fmt.Fprintf(out, "GitHub runners: cannot open the state store: %v\n", err)
		return len(cfg.GitHub)
	}
	defer st.Close()
	bad := 0
	for _, e := range cfg.GitHub {
		reg, err := loadGitHubRegistration(st, e)
		if err == nil {
			err = github.Verify(ctx, &http.Client{Timeout: registerTimeout}, reg)
		}
		switch {
		case err == nil:
			fmt.Fprintf(out, "github runner %q (id %d, %s): ok\n", e.Name, e.RunnerID, e.URL)
		case errors.Is(err, github.ErrRegistrationGone):
			bad++
			fmt.Fprintf(out, "github runner %q (id %d, %s): deleted on GitHub; remove it (airlock unregister github --name %s) and register again\n", e.Name, e.RunnerID, e.URL, e.Name)
		default:
			bad++
			fmt.Fprintf(out, "github runner %q (id %d, %s): %v\n", e.Name, e.RunnerID, e.URL, err)
		}
	}
	return bad
}
