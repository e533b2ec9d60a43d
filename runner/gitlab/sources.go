package gitlab

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/airlock-ci/airlock/runner/checkout"
)

// Hook names GitLab sends in hooks[].
const (
	HookPreGetSources  = "pre_get_sources_script"
	HookPostGetSources = "post_get_sources_script"
)

func (r *JobResponse) variable(key string) (string, bool) {
	val, ok := "", false
	for _, v := range r.Variables {
		if v.Key == key {
			val, ok = v.Value, true
		}
	}
	return strings.TrimSpace(val), ok
}

// GitStrategy is the job's GIT_STRATEGY: clone, fetch, none or empty;
// unset or unknown gives fetch when GitLab allows it, else clone (as
// gitlab-runner, which warns about an unknown value).
func (r *JobResponse) GitStrategy() string {
	v, _ := r.variable("GIT_STRATEGY")
	switch v = strings.ToLower(v); v {
	case "clone", "fetch", "none", "empty":
		return v
	}
	if r.AllowGitFetch {
		return "fetch"
	}
	return "clone"
}

// CheckoutSpec is the host-side checkout the job asks for; ok is false
// for GIT_STRATEGY none and empty (a fresh, empty workspace: Airlock's
// workspaces never outlive a job, so the two are the same). fetch uses
// the per-project cache under cacheDir when there is one. GIT_CLEAN_FLAGS
// has nothing to clean in a fresh workspace.
func (r *JobResponse) CheckoutSpec(cacheDir string) (checkout.Spec, bool) {
	strategy := r.GitStrategy()
	if strategy == "none" || strategy == "empty" {
		return checkout.Spec{}, false
	}
	depth := r.GitInfo.Depth
	if v, ok := r.variable("GIT_DEPTH"); ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			depth = n
		}
	}
	spec := checkout.Spec{
		RepoURL:  r.GitInfo.RepoURL,
		Ref:      r.GitInfo.Ref,
		RefType:  r.GitInfo.RefType,
		SHA:      r.GitInfo.SHA,
		Refspecs: r.GitInfo.Refspecs,
		Depth:    depth,
		Username: "gitlab-ci-token",

		ObjectFormat: r.GitInfo.RepoObjectFormat,
		Token:        r.Token,
	}
	if strategy == "fetch" {
		spec.CacheDir = cacheDir
	}
	spec.Submodules, _ = r.variable("GIT_SUBMODULE_STRATEGY")
	spec.Submodules = strings.ToLower(spec.Submodules)
	if v, ok := r.variable("GIT_SUBMODULE_UPDATE_FLAGS"); ok {
		spec.SubmoduleFlags = strings.Fields(v)
	}
	if v, ok := r.variable("GIT_FETCH_EXTRA_FLAGS"); ok {
		spec.FetchFlags = strings.Fields(v)
	}
	if v, ok := r.variable("GIT_SUBMODULE_PATHS"); ok {
		spec.SubmodulePaths = strings.Fields(v)
	}
	if v, _ := r.variable("GIT_CHECKOUT"); strings.EqualFold(v, "false") {
		spec.NoCheckout = true
	}
	if v, ok := r.variable("GIT_SUBMODULE_DEPTH"); ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			spec.SubmoduleDepth = n
		}
	}
	return spec, true
}

// maxAttempts bounds the job's *_ATTEMPTS variables, as gitlab-runner does.
const maxAttempts = 10

// attemptsVariables are gitlab-runner's job-stage retry counts
// (checkSources refuses a value out of 1..maxAttempts).
// EXECUTOR_JOB_SECTION_ATTEMPTS is accepted and has nothing to retry:
// a step is never re-run after a runtime failure, the job fails.
var attemptsVariables = []string{"GET_SOURCES_ATTEMPTS", "ARTIFACT_DOWNLOAD_ATTEMPTS",
	"RESTORE_CACHE_ATTEMPTS", "SECRETS_RETRIEVAL_ATTEMPTS", "EXECUTOR_JOB_SECTION_ATTEMPTS"}

// attempts is the job's variable name (one of attemptsVariables): how
// many times that stage is tried before it fails; def when unset.
func (r *JobResponse) attempts(name string, def int) int {
	v, ok := r.variable(name)
	n, err := strconv.Atoi(v)
	if !ok || err != nil || n < 1 || n > maxAttempts {
		return def
	}
	return n
}

// checkSources refuses what Airlock cannot do of the job's sources,
// naming the keyword.
func (r *JobResponse) checkSources() []error {
	var errs []error
	for _, h := range r.Hooks {
		switch h.Name {
		case HookPreGetSources:
			if len(h.Script) > 0 && r.GitStrategy() != "none" && r.GitStrategy() != "empty" {
				errs = append(errs, fmt.Errorf("hooks: %s is not supported by Airlock: sources are fetched on the host before the job's container runs anything (use post_get_sources_script or the script)", HookPreGetSources))
			}
		case HookPostGetSources:
		default:
			errs = append(errs, fmt.Errorf("hooks: %q is not supported by Airlock", truncate(h.Name)))
		}
	}
	switch v, _ := r.variable("GIT_SUBMODULE_STRATEGY"); strings.ToLower(v) {
	case "", "none", "normal", "recursive":
	default:
		errs = append(errs, fmt.Errorf("variable GIT_SUBMODULE_STRATEGY %q: must be none, normal or recursive", truncate(v)))
	}
	for _, name := range attemptsVariables {
		if v, ok := r.variable(name); ok && v != "" {
			if n, err := strconv.Atoi(v); err != nil || n < 1 || n > maxAttempts {
				errs = append(errs, fmt.Errorf("variable %s %q: must be a number from 1 to %d", name, truncate(v), maxAttempts))
			}
		}
	}
	// Sources are fetched on the host, which verifies GitLab's
	// certificate against the system's CAs.
	if v, _ := r.variable("GIT_SSL_NO_VERIFY"); v != "" && !strings.EqualFold(v, "false") && v != "0" {
		errs = append(errs, fmt.Errorf("variable GIT_SSL_NO_VERIFY is not supported by Airlock: the host fetching the sources verifies GitLab's certificate"))
	}
	return errs
}

// postSourcesScript is the job's post_get_sources_script, run inside the
// sandbox as the first step (after the sources are in place); none for
// GIT_STRATEGY none and empty.
func (r *JobResponse) postSourcesScript() []string {
	if s := r.GitStrategy(); s == "none" || s == "empty" {
		return nil
	}
	for _, h := range r.Hooks {
		if h.Name == HookPostGetSources {
			return h.Script
		}
	}
	return nil
}

// CloneDir is where GIT_CLONE_PATH puts the project: "" when it is unset
// or names buildsDir itself. Its variables are expanded, $CI_BUILDS_DIR
// as buildsDir and otherwise public ones only (the path is in the
// container's configuration, where no secret may be); as gitlab-runner's
// custom build directories it must be below buildsDir.
func (r *JobResponse) CloneDir(buildsDir string) (string, error) {
	raw, _ := r.variable("GIT_CLONE_PATH")
	if raw == "" {
		return "", nil
	}
	dir, private := r.expandPublic(raw, map[string]string{"CI_BUILDS_DIR": buildsDir})
	switch {
	case len(private) > 0:
		return "", fmt.Errorf("variable GIT_CLONE_PATH: %s is not a public variable (the path is in the container's configuration, where no secret may be)", strings.Join(private, ", "))
	case !cleanText(dir) || !path.IsAbs(dir) || path.Clean(dir) != strings.TrimSuffix(dir, "/"):
		return "", fmt.Errorf("variable GIT_CLONE_PATH %q: must be an absolute path without . or .. components", truncate(dir))
	}
	dir = path.Clean(dir)
	if dir == path.Clean(buildsDir) {
		return "", nil
	}
	if !strings.HasPrefix(dir, path.Clean(buildsDir)+"/") {
		return "", fmt.Errorf("variable GIT_CLONE_PATH %q: must be below the builds directory %s ($CI_BUILDS_DIR)", truncate(dir), buildsDir)
	}
	return dir, nil
}
