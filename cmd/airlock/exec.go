package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/wiring"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/runner/local"
)

func init() { addCommand(newExecCmd) }

type execOptions struct {
	image     string
	timeout   time.Duration
	vars      []string
	pull      string
	executor  string
	repo      string
	ref       string
	env       string
	protected bool
	gitDir    string
	change    string
}

func newExecCmd(g *globals) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec JOBFILE",
		Short: "Run a job file in a hardened container",
		Long: `Run a local job file (YAML close to a GitLab CI job: image, before_script,
script, after_script, variables, timeout, secrets, egress) in a hardened
container, streaming its output. The process exits with the job's exit code.

The first Ctrl-C cancels the running step (after_script still runs); a
second one aborts the job at once. Either way the container is removed.`,
		Example: `  airlock exec testdata/jobs/demo.yml
  airlock exec --image airlock-test:busybox -e GREETING=hi --timeout 5m job.yml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExec(cmd, g, o, args[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.image, "image", "", "image to run the job in (overrides the job file's)")
	f.DurationVar(&o.timeout, "timeout", 0, "job timeout (overrides the job file's), e.g. 10m")
	f.StringArrayVarP(&o.vars, "var", "e", nil, "set a job variable KEY=VALUE (repeatable)")
	f.StringVar(&o.pull, "pull-policy", "", "image pull policy: if-not-present, never or always (default from config)")
	f.StringVar(&o.executor, "executor", "", "executor to run the job with: docker or containerd (default from config, else docker)")
	f.StringVar(&o.repo, "repo", "", "repository the job runs for, which decides its grants and egress ceiling (default: the git checkout's remote path)")
	f.StringVar(&o.ref, "ref", "", "branch or tag the job runs for (default: the git checkout's current branch)")
	f.StringVar(&o.env, "env", "", "deployment environment the job runs in (grants may be limited to environments)")
	f.BoolVar(&o.protected, "protected", false, "the ref is protected (grants may be limited to protected refs)")
	f.StringVar(&o.gitDir, "git-dir", "", "repository holding the change, scanned for credentials before anything of the job exists (with --change)")
	f.StringVar(&o.change, "change", "", "the change to scan, BASE..HEAD (revisions of --git-dir; default BASE..HEAD with HEAD the checkout's)")
	return cmd
}

// loadConfig loads the configuration file; it may be missing unless the
// user named it.
func loadConfig(cmd *cobra.Command, g *globals) (*config.Config, error) {
	named := cmd.Flags().Changed("config") || os.Getenv("AIRLOCK_CONFIG") != ""
	cfg, err := config.Load(g.ConfigPath, !named)
	if err != nil {
		return nil, err
	}
	g.configure(cfg)
	if g.StateDir != "" {
		cfg.StateDir = g.StateDir
	}
	return cfg, nil
}

func runExec(cmd *cobra.Command, g *globals, o execOptions, path string) error {
	j, err := local.ReadFile(path)
	if err != nil {
		// A job file without an image is fine when --image gives one.
		if o.image == "" {
			return &exitError{code: 2, msg: err.Error()}
		}
		if j, err = readWithImage(path, o.image); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
	}
	if err := applyExecFlags(j, o); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	// What the checkout says about the job (git execs) is read while the
	// runner opens; the flags and --change win over it.
	gitID := make(chan func(), 1)
	go func() {
		repo, ref, sha := gitIdentity(o.repo == "", o.ref == "")
		gitID <- func() {
			j.Repo = cmp.Or(j.Repo, repo)
			j.Ref = cmp.Or(j.Ref, ref)
			j.SHA = cmp.Or(j.SHA, sha)
		}
	}()
	cfg, err := loadConfig(cmd, g)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if o.executor != "" {
		switch o.executor {
		case config.ExecutorDocker, config.ExecutorContainerd:
			cfg.Executor = o.executor
		default:
			return &exitError{code: 2, msg: fmt.Sprintf("--executor %q: must be docker or containerd", o.executor)}
		}
	}
	if o.pull != "" {
		if _, err := executors.ParsePullPolicy(o.pull); err != nil {
			return &exitError{code: 2, msg: "--pull-policy: " + err.Error()}
		}
		cfg.SetPullPolicy(o.pull)
	}
	log := g.Logger()
	ctx, cancel, stop := jobSignals(cmd.Context(), cmd.ErrOrStderr())
	defer stop()
	t0 := time.Now()
	r, err := wiring.Open(ctx, cfg, log)
	if err != nil {
		return err
	}
	log.Debug("runner opened", "took", time.Since(t0))
	defer func() {
		t0 := time.Now()
		if cerr := r.Close(); cerr != nil {
			log.Error("closing the runner", "error", cerr)
		}
		log.Debug("runner closed", "took", time.Since(t0))
	}()
	// Cleaning up after crashed earlier runs does not touch this job (only
	// dead processes' leftovers), so it runs beside it.
	recovered := make(chan struct{})
	go func() {
		defer close(recovered)
		t0 := time.Now()
		if _, err := r.Recover(ctx); err != nil {
			log.Warn("recovering after an earlier crash", "error", err)
		}
		log.Debug("recovery done", "took", time.Since(t0))
	}()
	defer func() { <-recovered }()
	(<-gitID)()
	out := cmd.OutOrStdout()
	res, err := r.Run(ctx, j, runner.RunOptions{Out: out, Cancel: cancel, AwaitAudit: true, GitDir: o.gitDir})
	printSummary(out, res)
	if err != nil {
		return fmt.Errorf("cleaning up after job %s: %w", j.ID, err)
	}
	return resultExit(res)
}

// readWithImage parses a job file that lacks an image, giving it one.
func readWithImage(path, image string) (*job.Job, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading job file: %w", err)
	}
	return local.Parse(path, append([]byte("image: "+quoteYAML(image)+"\n"), b...))
}

func quoteYAML(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func applyExecFlags(j *job.Job, o execOptions) error {
	if o.image != "" {
		j.Image = o.image
	}
	if o.timeout < 0 {
		return errors.New("--timeout: must be positive")
	}
	if o.timeout > 0 {
		j.Timeout = o.timeout
	}
	j.Repo, j.Ref = o.repo, o.ref
	j.Environment, j.Protected = o.env, o.protected
	if err := applyChange(j, o); err != nil {
		return err
	}
	for _, kv := range o.vars {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !job.ValidVarName(k) {
			return fmt.Errorf("-e %q: want KEY=VALUE with KEY a valid variable name", kv)
		}
		replaced := false
		for i := range j.Variables {
			if j.Variables[i].Key == k {
				j.Variables[i].Value, replaced = v, true
			}
		}
		if !replaced {
			j.Variables = append(j.Variables, job.Variable{Key: k, Value: v})
		}
	}
	return j.Validate()
}

// jobSignals watches SIGINT and SIGTERM: the first closes the returned
// channel (cancel the job; after_script still runs), the second cancels the
// returned context (abort at once).
func jobSignals(parent context.Context, w io.Writer) (context.Context, <-chan struct{}, func()) {
	ctx, abort := context.WithCancelCause(parent)
	cancel := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for n := 1; ; n++ {
			select {
			case <-sigs:
			case <-done:
				return
			}
			if n == 1 {
				fmt.Fprintln(w, "\nairlock: canceling the job (after_script still runs); interrupt again to abort")
				close(cancel)
				continue
			}
			fmt.Fprintln(w, "\nairlock: aborting the job")
			abort(runner.ErrAborted)
			return
		}
	}()
	return ctx, cancel, func() {
		signal.Stop(sigs)
		close(done)
		abort(nil)
	}
}

func printSummary(w io.Writer, res *runner.Result) {
	if res == nil {
		return
	}
	// Step names, errors and the egress summary hold what the job chose
	// (host names among them): all of it goes through the job's masker.
	mask := res.Mask
	if mask == nil {
		mask = func(s string) string { return s }
	}
	w = &maskedWriter{w: w, mask: mask}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Summary:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range res.Steps {
		switch {
		case s.Skipped:
			fmt.Fprintf(tw, "  %s\tskipped\t\n", s.Name)
		case s.Err != nil:
			fmt.Fprintf(tw, "  %s\tstopped\t%s\n", s.Name, s.Duration.Round(time.Millisecond))
		default:
			fmt.Fprintf(tw, "  %s\texit %d\t%s\n", s.Name, s.ExitCode, s.Duration.Round(time.Millisecond))
		}
	}
	tw.Flush()
	if res.Egress != nil {
		fmt.Fprintln(w, res.Egress)
	}
	if res.AuditTrail != "" {
		fmt.Fprintf(w, "Audit trail: %s (airlock audit verify %s)\n", res.AuditTrail, res.AuditTrail)
	}
	switch res.State {
	case runner.Success:
		fmt.Fprintf(w, "Job succeeded in %s\n", res.Duration.Round(time.Millisecond))
	case runner.Canceled:
		fmt.Fprintf(w, "Job canceled after %s\n", res.Duration.Round(time.Millisecond))
	default:
		fmt.Fprintf(w, "Job failed (%s) after %s", res.Reason, res.Duration.Round(time.Millisecond))
		if res.Err != nil {
			fmt.Fprintf(w, ": %v", res.Err)
		}
		fmt.Fprintln(w)
	}
}

// Exit codes of `airlock exec` besides the job's own.
const (
	exitRunnerFailure = 1
	exitRefused       = 2
	exitTimeout       = 124
	exitCanceled      = 130
)

func resultExit(res *runner.Result) error {
	switch {
	case res.State == runner.Success:
		return nil
	case res.State == runner.Canceled:
		return &exitError{code: exitCanceled}
	case res.Reason == runner.ScriptFailure && res.ExitCode > 0:
		return &exitError{code: res.ExitCode}
	case res.Reason == runner.JobTimeout:
		return &exitError{code: exitTimeout}
	case res.Reason == runner.Unauthorized || res.Reason == runner.ConfigurationError:
		return &exitError{code: exitRefused}
	}
	return &exitError{code: exitRunnerFailure}
}

// gitIdentity reads the repository path, branch and commit of the git
// checkout in the working directory; empty where there is none. Only what
// the flags leave open is asked, all at once.
func gitIdentity(needRepo, needRef bool) (repo, ref, sha string) {
	git := func(dst *string, args ...string) func() {
		return func() {
			if out, err := exec.Command("git", args...).Output(); err == nil {
				*dst = strings.TrimSpace(string(out))
			}
		}
	}
	var wg sync.WaitGroup
	var remote string
	if needRepo {
		wg.Go(git(&remote, "remote", "get-url", "origin"))
	}
	if needRef {
		wg.Go(git(&ref, "rev-parse", "--abbrev-ref", "HEAD"))
	}
	wg.Go(git(&sha, "rev-parse", "HEAD"))
	wg.Wait()
	if ref == "HEAD" { // detached
		ref = ""
	}
	return job.RepoPath(remote), ref, sha
}

// applyChange resolves --change BASE..HEAD in --git-dir into the job's
// BeforeSHA and SHA, which the runner's leak scan covers.
func applyChange(j *job.Job, o execOptions) error {
	if o.change == "" && o.gitDir == "" {
		return nil
	}
	if o.change == "" || o.gitDir == "" {
		return errors.New("--change and --git-dir go together")
	}
	base, head, ok := strings.Cut(o.change, "..")
	if !ok || base == "" || strings.HasPrefix(head, ".") {
		return fmt.Errorf("--change %q: want BASE..HEAD", o.change)
	}
	if head == "" {
		head = "HEAD"
	}
	resolve := func(rev string) (string, error) {
		out, err := exec.Command("git", "-C", o.gitDir, "rev-parse", "--verify", "--end-of-options", rev+"^{commit}").Output()
		if err != nil {
			return "", fmt.Errorf("--change: %q is not a commit in %s", rev, o.gitDir)
		}
		return strings.TrimSpace(string(out)), nil
	}
	var err error
	if j.BeforeSHA, err = resolve(base); err != nil {
		return err
	}
	j.SHA, err = resolve(head)
	return err
}

// maskedWriter masks each Write as a whole (printSummary writes whole
// lines and fields).
type maskedWriter struct {
	w    io.Writer
	mask func(string) string
}

func (m *maskedWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(m.w, m.mask(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
