// Package checkout fetches a job's sources on the runner host, with the
// coordinator's job token, so that the job (whose network reaches nothing
// but its own gateway) never talks to the coordinator and never holds a
// clone credential. Coordinators (runner/gitlab, runner/github) use it to
// implement their lease's Workspace.
package checkout

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// initArgs are the arguments of git init for dir (the workspace's or
// the cache's), with the repository's object format.
func (spec Spec) initArgs(dir string, flags ...string) []string {
	args := append([]string{"init", "--quiet"}, flags...)
	if spec.ObjectFormat != "" {
		args = append(args, "--object-format="+spec.ObjectFormat)
	}
	return append(args, dir)
}

// fetchFlags are the GIT_FETCH_EXTRA_FLAGS accepted (host git runs
// them: nothing that names a path, a program or a filter).
var fetchFlags = map[string]bool{
	"--tags": true, "--no-tags": true, "--prune": true, "--no-prune": true, "--prune-tags": true,
	"--quiet": true, "-q": true, "--verbose": true, "-v": true, "--force": true, "-f": true,
	"--no-recurse-submodules": true,
}

// Spec says which sources to fetch for a job. The clone runs on
// the host, so that the job (whose network reaches nothing but its own
// gateway) never talks to the coordinator and never holds a clone
// credential.
type Spec struct {
	// RepoURL is the repository; credentials in it (GitLab sends
	// gitlab-ci-token:<job token>@) are removed before git sees it.
	RepoURL string
	// Ref and RefType (branch or tag) name what the pipeline runs.
	Ref, RefType string
	// SHA is the commit to check out.
	SHA string
	// Refspecs are fetched (default: the ref's own).
	Refspecs []string
	// Depth makes a shallow fetch; 0 fetches the whole history.
	Depth int
	// ObjectFormat is the repository's hash: "" or sha1, or sha256
	// (git_info.repo_object_format); the workspace and the cache are
	// made with it, or git finds none of the remote's commits.
	ObjectFormat string
	// FetchFlags are GIT_FETCH_EXTRA_FLAGS (an allowlist), after
	// Airlock's own --quiet --prune (a later flag wins). As with
	// gitlab-runner, tags pointing into the fetched history come along
	// unless --no-tags says otherwise.
	FetchFlags []string
	// Username and Token authenticate the fetch (HTTP Basic). The token
	// reaches git only through its environment: never its command line,
	// never a file.
	Username, Token string
	// Git is the git binary (default "git").
	Git string
	// CacheDir, when set, keeps a bare repository per remote under it
	// (GIT_STRATEGY fetch): the remote is fetched into it incrementally
	// and the workspace fetches from it locally.
	CacheDir string
	// Submodules is GIT_SUBMODULE_STRATEGY: "" or none, normal, recursive.
	// Submodules must live on the repository's own host (they are fetched
	// with the job token); others fail the checkout, naming them.
	Submodules string
	// SubmoduleFlags are GIT_SUBMODULE_UPDATE_FLAGS (an allowlist).
	SubmoduleFlags []string
	// SubmoduleDepth is GIT_SUBMODULE_DEPTH (default: Depth).
	SubmoduleDepth int
	// SubmodulePaths is GIT_SUBMODULE_PATHS: which of the top-level
	// submodules to check out, as paths (a submodule's own, or a
	// directory holding it) and exclusions (":(exclude)path" or
	// ":!path"); none: every one. Nested submodules of a chosen one are
	// all checked out (recursive).
	SubmodulePaths []string
	// NoCheckout fetches only (GitLab's GIT_CHECKOUT=false): the commit
	// and refs are in the repository for the job to check out itself; no
	// working tree, no submodules.
	NoCheckout bool
}

var shaRE = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)

// gitTimeout bounds every git command.
const gitTimeout = 30 * time.Minute

// Run fetches the sources into dir (which must exist and be empty)
// and checks out spec.SHA. Progress goes to out (the job log). Nothing in
// dir afterwards holds the token: the remote URL carries no credentials
// and the authorization header lived only in git's environment.
func Run(ctx context.Context, spec Spec, dir string, out io.Writer) error {
	if out == nil {
		out = io.Discard
	}
	if spec.Git == "" {
		spec.Git = "git"
	}
	u, err := url.Parse(spec.RepoURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("checking out sources: repo_url is not an http(s) URL")
	}
	if u.User != nil {
		if spec.Username == "" {
			spec.Username = u.User.Username()
		}
		if p, ok := u.User.Password(); ok && spec.Token == "" {
			spec.Token = p
		}
		u.User = nil
	}
	u.RawQuery, u.Fragment = "", ""
	remote := u.String()
	if spec.SHA != "" && !shaRE.MatchString(spec.SHA) {
		return errors.New("checking out sources: sha is not a commit id")
	}
	if spec.Ref == "" && spec.SHA == "" {
		return errors.New("checking out sources: neither ref nor sha given")
	}
	if strings.HasPrefix(spec.Ref, "-") || strings.ContainsAny(spec.Ref, " \t\n\\:~^?*[") {
		return errors.New("checking out sources: ref is not a valid git ref name")
	}
	refspecs := spec.Refspecs
	if len(refspecs) == 0 && spec.Ref != "" {
		if spec.RefType == "tag" {
			refspecs = []string{"+refs/tags/" + spec.Ref + ":refs/tags/" + spec.Ref}
		} else {
			refspecs = []string{"+refs/heads/" + spec.Ref + ":refs/remotes/origin/" + spec.Ref}
		}
	}
	for _, rs := range refspecs {
		if strings.HasPrefix(rs, "-") {
			return errors.New("checking out sources: refspec starts with '-'")
		}
	}
	switch spec.ObjectFormat {
	case "", "sha1", "sha256":
	default:
		return fmt.Errorf("checking out sources: repository object format %q is not supported by Airlock (sha1, sha256)", spec.ObjectFormat)
	}
	for _, f := range spec.FetchFlags {
		if !fetchFlags[f] {
			return fmt.Errorf("checking out sources: GIT_FETCH_EXTRA_FLAGS %q is not supported by Airlock (supported: %s)", f, strings.Join(slices.Sorted(maps.Keys(fetchFlags)), " "))
		}
	}

	g := &gitRunner{bin: spec.Git, dir: dir, out: out, env: gitEnv(u, spec.Username, spec.Token)}
	fmt.Fprintf(out, "Fetching sources from %s on the runner host", remote)
	if spec.Depth > 0 {
		fmt.Fprintf(out, " (depth %d)", spec.Depth)
	}
	fmt.Fprintln(out)
	if err := g.run(ctx, spec.initArgs(".")...); err != nil {
		return err
	}
	if err := g.run(ctx, "remote", "add", "origin", remote); err != nil {
		return err
	}
	fetch := append([]string{"fetch", "--quiet", "--prune"}, spec.FetchFlags...)
	if spec.Depth > 0 {
		fetch = append(fetch, "--depth", strconv.Itoa(spec.Depth))
	}
	from, fg := "origin", g
	if spec.CacheDir != "" {
		repo, unlock, err := updateCache(ctx, spec, remote, g.env, refspecs, g)
		if err != nil {
			return err
		}
		defer unlock()
		// From the host's cache: a local fetch, no token, no network.
		from, fg = repo, &gitRunner{bin: g.bin, dir: dir, out: out, env: localEnv()}
	}
	fetch = append(fetch, from)
	if len(refspecs) > 0 {
		if err := fg.run(ctx, append(fetch, refspecs...)...); err != nil {
			return err
		}
	}
	target := spec.SHA
	if target == "" {
		target = "FETCH_HEAD"
	}
	if spec.SHA != "" && g.run(ctx, "cat-file", "-e", spec.SHA+"^{commit}") != nil {
		// Not among the fetched refs (deeper than depth, or a pipeline
		// ref): fetch the commit itself.
		if err := fg.run(ctx, append(fetch, spec.SHA)...); err != nil {
			return err
		}
	}
	if spec.NoCheckout {
		fmt.Fprintf(out, "Skipping Git checkout (GIT_CHECKOUT=false): %s is fetched\n", short(target))
		return scrub(dir)
	}
	fmt.Fprintf(out, "Checking out %s as %s\n", short(target), spec.Ref)
	if err := g.run(ctx, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", target); err != nil {
		return err
	}
	if err := submodules(ctx, spec, u, g); err != nil {
		return err
	}
	return scrub(dir)
}

func short(s string) string {
	if len(s) > 8 && shaRE.MatchString(s) {
		return s[:8]
	}
	return s
}

// gitEnv is git's whole environment: no user or system config, no
// prompts, http(s) only, and the authorization header (scoped to the
// repository's origin) through GIT_CONFIG_* variables.
func gitEnv(u *url.URL, user, token string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=/nonexistent",
		"LC_ALL=C",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ASKPASS=/bin/false",
		"SSH_ASKPASS=/bin/false",
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_ALLOW_PROTOCOL=http:https",
		"GIT_LFS_SKIP_SMUDGE=1",
	}
	cfg := [][2]string{
		{"http.followRedirects", "false"},
		{"credential.helper", ""},
		{"core.hooksPath", "/dev/null"},
		{"protocol.version", "2"},
	}
	if token != "" {
		if user == "" {
			user = "gitlab-ci-token"
		}
		origin := u.Scheme + "://" + u.Host + "/"
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + token))
		cfg = append(cfg, [2]string{"http." + origin + ".extraHeader", "Authorization: Basic " + auth})
	}
	env = append(env, "GIT_CONFIG_COUNT="+strconv.Itoa(len(cfg)))
	for i, kv := range cfg {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, kv[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, kv[1]))
	}
	return env
}

// localEnv is git's environment for a fetch from the host's cache
// repository: the file transport only, no credentials.
func localEnv() []string {
	env := gitEnv(&url.URL{}, "", "")
	for i, kv := range env {
		if strings.HasPrefix(kv, "GIT_ALLOW_PROTOCOL=") {
			env[i] = "GIT_ALLOW_PROTOCOL=file"
		}
	}
	return env
}

// gitRunner runs git commands in one directory.
type gitRunner struct {
	bin string
	dir string
	out io.Writer
	env []string
}

func (g *gitRunner) run(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, gitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.bin, args...)
	cmd.Dir = g.dir
	cmd.Env = g.env
	cmd.Stdout = g.out
	cmd.Stderr = g.out
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		// args never hold a secret: the token is only in cmd.Env.
		return fmt.Errorf("checking out sources: git %s: %w", args[0], err)
	}
	return nil
}

// scrub removes from .git what could hold a URL with credentials
// or the fetch's leftovers; the job gets a plain repository.
func scrub(dir string) error {
	var errs []error
	for _, f := range []string{"FETCH_HEAD", "ORIG_HEAD"} {
		if err := os.Remove(filepath.Join(dir, ".git", f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("checking out sources: cleaning .git: %w", errors.Join(errs...))
	}
	return nil
}
