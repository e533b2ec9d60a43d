package gitlab

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// Limits on a job payload. Anything beyond them is refused, never truncated.
const (
	maxSteps          = 16
	maxScriptLines    = 10000
	maxScriptBytes    = 4 << 20
	maxVariables      = 4096
	maxVariableBytes  = 4 << 20
	maxDeclaredLen    = 64 << 10
	maxJobTimeout     = 31 * 24 * time.Hour // GitLab's ceiling is one month
	defaultJobTimeout = 2 * time.Hour       // gitlab-runner's default when none is sent
)

// Variables Airlock reads its declarations from: job variables here (see
// package job for their syntax, shared with GitHub's job-level env).
// Example: AIRLOCK_SECRETS: "deploy_token, npm:NPM_TOKEN@proxy kubeconfig@file".
const (
	SecretsVariable = job.SecretsVariable
	EgressVariable  = job.EgressVariable
)

// Step names GitLab sends.
const (
	StepScript      = "script"
	StepAfterScript = "after_script"
	StepRelease     = "release"
)

// ToJob converts the payload into the normalized job. Every problem is
// reported at once; error messages name fields and variables, never values.
// When the job names no image, Image is empty and the runner fills in its
// default image (and then calls job.Validate again).
func (r *JobResponse) ToJob() (*job.Job, error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if r.ID <= 0 {
		add("id: missing or not positive")
	}
	if r.Token == "" {
		add("token: missing")
	}
	if len(r.Run) > 0 && string(r.Run) != "null" && string(r.Run) != `""` {
		add("run: CI steps (run:) are not supported by Airlock; use script")
	}
	if _, serrs := r.parseSecrets(); len(serrs) > 0 {
		errs = append(errs, serrs...)
	}
	errs = append(errs, r.checkPipeline()...)
	errs = append(errs, r.checkSources()...)

	j := &job.Job{
		ID:     strconv.FormatInt(r.ID, 10),
		Source: job.SourceGitLab,
		Name:   r.JobInfo.Name,
		Ref:    r.GitInfo.Ref,
		SHA:    r.GitInfo.SHA,
		Image:  strings.TrimSpace(r.Image.Name),
		// What the change adds is scanned for leaked keys: from the
		// merge request's diff base, else the push's before_sha.
		BeforeSHA: r.GitInfo.BeforeSHA,
	}
	for _, v := range r.Variables {
		if v.Key == "CI_MERGE_REQUEST_DIFF_BASE_SHA" && v.Value != "" {
			j.BeforeSHA = v.Value
		}
	}
	j.Repo = strings.Trim(r.JobInfo.ProjectFullPath, "/")
	if j.Repo == "" {
		j.Repo = job.RepoPath(r.GitInfo.RepoURL)
	}
	if j.Repo == "" {
		add("job_info.project_full_path: missing, and git_info.repo_url names no project")
	} else if !cleanText(j.Repo) || strings.Contains(j.Repo, "..") {
		add("job_info.project_full_path: contains control characters or '..'")
	}

	switch t := r.RunnerInfo.Timeout; {
	case t < 0:
		add("runner_info.timeout: negative")
	case time.Duration(t) > maxJobTimeout/time.Second:
		add("runner_info.timeout: %d seconds is more than %s", t, maxJobTimeout)
	case t == 0:
		j.Timeout = defaultJobTimeout
	default:
		j.Timeout = time.Duration(t) * time.Second
	}

	errs = append(errs, r.convertImage(j)...)
	errs = append(errs, r.convertServices(j)...)
	errs = append(errs, r.convertRegistryAuth(j)...)
	errs = append(errs, r.convertSteps(j)...)
	errs = append(errs, r.convertVariables(j)...)
	r.convertJobToken(j)

	if len(errs) == 0 {
		// job.Validate checks names and the step set; the image may be the
		// runner's default, filled in later.
		check := *j
		if check.Image == "" {
			check.Image = "runner-default"
		}
		if err := check.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("converting GitLab job %d: %w", r.ID, errors.Join(errs...))
	}
	return j, nil
}

func (r *JobResponse) convertSteps(j *job.Job) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(r.Steps) > maxSteps {
		add("steps: %d steps, at most %d", len(r.Steps), maxSteps)
		return errs
	}
	hasScript := false
	total := 0
	for i, s := range r.Steps {
		where := fmt.Sprintf("steps[%d]", i)
		var when job.When
		switch s.Name {
		case StepScript:
			hasScript = true
			when = job.OnSuccess
		case StepAfterScript:
			when = job.Always
		case StepRelease:
			// release: — GitLab's commands for the release CLI (or glab),
			// run in the job's image after the script as gitlab-runner
			// runs them; the job token they use is the job's surrogate.
			when = job.OnSuccess
		default:
			add("%s.name %q: unknown step (want script, release or after_script)", where, truncate(s.Name))
			continue
		}
		if s.When != "" {
			when = job.When(s.When)
			if !when.Valid() {
				add("%s (%s).when %q: must be on_success, on_failure or always", where, s.Name, truncate(s.When))
			}
		}
		if s.Timeout < 0 || time.Duration(s.Timeout) > maxJobTimeout/time.Second {
			add("%s (%s).timeout: %d seconds is out of range", where, s.Name, s.Timeout)
		}
		if len(s.Script) > maxScriptLines {
			add("%s (%s).script: %d lines, at most %d", where, s.Name, len(s.Script), maxScriptLines)
			continue
		}
		for k, line := range s.Script {
			total += len(line)
			if strings.IndexByte(line, 0) >= 0 {
				add("%s (%s).script[%d]: contains a NUL byte", where, s.Name, k)
			}
		}
		if len(s.Script) == 0 {
			if s.Name != StepAfterScript {
				add("%s (%s).script: no lines", where, s.Name)
			}
			continue // an empty after_script is no step
		}
		j.Steps = append(j.Steps, job.Step{
			Name:         s.Name,
			Script:       append([]string(nil), s.Script...),
			When:         when,
			Timeout:      time.Duration(max(s.Timeout, 0)) * time.Second,
			AllowFailure: s.AllowFailure,
		})
	}
	if total > maxScriptBytes {
		add("steps: %d bytes of script, at most %d", total, maxScriptBytes)
	}
	if post := r.postSourcesScript(); len(post) > 0 && hasScript {
		// Inside the sandbox, once the sources are in place.
		j.Steps = append([]job.Step{{Name: HookPostGetSources, Script: append([]string(nil), post...), When: job.OnSuccess}}, j.Steps...)
	}
	if !hasScript && len(errs) == 0 {
		add("steps: no script step")
	}
	return errs
}

func (r *JobResponse) convertVariables(j *job.Job) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(r.Variables) > maxVariables {
		add("variables: %d variables, at most %d", len(r.Variables), maxVariables)
		return errs
	}
	var secrets, egress *JobVariable
	var protected *bool = r.GitInfo.Protected
	for i := range r.Variables {
		v := &r.Variables[i]
		if !job.ValidVarName(v.Key) {
			add("variables[%d] %q: not a valid variable name", i, truncate(v.Key))
			continue
		}
		if strings.IndexByte(v.Value, 0) >= 0 {
			add("variables[%d] %s: value contains a NUL byte", i, v.Key)
			continue
		}
		if len(v.Value) > maxVariableBytes {
			add("variables[%d] %s: value of %d bytes, at most %d", i, v.Key, len(v.Value), maxVariableBytes)
			continue
		}
		j.Variables = append(j.Variables, job.Variable{
			Key: v.Key, Value: v.Value, Masked: v.Masked, File: v.File, Raw: v.Raw, Public: v.Public,
		})
		switch v.Key {
		case "CI_ENVIRONMENT_NAME":
			j.Environment = v.Value
		case "CI_COMMIT_REF_PROTECTED":
			if r.GitInfo.Protected == nil {
				p := v.Value == "true"
				protected = &p
			}
		case SecretsVariable:
			secrets = v
		case EgressVariable:
			egress = v
		}
	}
	if protected != nil {
		j.Protected = *protected
	}
	if secrets != nil {
		reqs, err := ParseSecrets(secrets.Value)
		if err != nil {
			if secrets.Masked {
				err = errors.New("invalid declaration (masked, not shown)")
			}
			add("variable %s: %w", SecretsVariable, err)
		}
		j.Secrets = reqs
	}
	if egress != nil {
		if len(egress.Value) > maxDeclaredLen {
			add("variable %s: longer than %d bytes", EgressVariable, maxDeclaredLen)
		} else {
			j.Egress = splitList(egress.Value)
		}
	}
	return errs
}

// ParseSecrets parses the AIRLOCK_SECRETS syntax (job.ParseSecrets).
func ParseSecrets(s string) ([]job.SecretRequest, error) { return job.ParseSecrets(s) }

// splitList splits on commas and white space, dropping empty entries.
func splitList(s string) []string { return job.SplitList(s) }

func cleanText(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// truncate bounds a payload string quoted in an error.
func truncate(s string) string {
	const n = 64
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
