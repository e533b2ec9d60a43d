package fakegitlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Variable is a job variable of a JobSpec.
type Variable struct {
	Key    string
	Value  string
	Masked bool
	File   bool
	Raw    bool
	Public bool
}

// JobSpec describes a job to hand out; zero fields get the defaults of
// gitlab-job-example.json.
type JobSpec struct {
	Name        string
	Stage       string
	Project     string // full path, default "platform/web-app"
	Ref         string // default "main"
	SHA         string
	Protected   bool
	Environment string // CI_ENVIRONMENT_NAME
	Image       string // default "alpine:3.20"
	// PullPolicy is the image's pull_policy: null unless the job sets
	// one, as GitLab sends it.
	PullPolicy []string
	// User is the image's executor_opts.docker.user (image:docker:user).
	User        string
	Script      []string
	AfterScript []string
	Timeout     time.Duration // runner_info.timeout; default 1h
	Variables   []Variable
	Secrets     string // AIRLOCK_SECRETS, omitted when empty
	Egress      string // AIRLOCK_EGRESS, omitted when empty
	// FailureReasons the job accepts; nil: GitLab's current list.
	FailureReasons []string
	// Artifacts, Cache and Dependencies fill the payload's entries.
	Artifacts    []ArtifactSpec
	Cache        []CacheSpec
	Dependencies []DependencySpec
	Services     []ServiceSpec
	// GitLabSecrets is the payload's secrets: map (GitLab CI secrets).
	GitLabSecrets map[string]any
	// Token is the job token (default: a random glcbt-64_ one).
	Token string
	// Registry is the host[:port] of the project's container registry,
	// which the payload's credentials name (as GitLab's CI_REGISTRY; the
	// password is the job token); default this fake's own host.
	Registry string
	// Payload, when set, builds the payload sent instead of the default one
	// (for malformed-payload tests), given the job's id and token.
	Payload func(id JobID, token string) []byte
}

// JobState is what the fake knows about a job.
type JobState struct {
	ID            JobID
	Token         string
	Status        string // pending, running, canceling, canceled, success, failed
	Reported      string // state of the final update (success/failed)
	FailureReason string
	ExitCode      *int
	Checksum      string
	Bytesize      int64
	Touches       int // PUT state=running
	MaxChunk      int // largest trace PATCH body
	Finished      bool
}

// Artifact is an uploaded artifact.
type Artifact struct {
	Name     string
	Type     string
	Format   string
	ExpireIn string
	Data     []byte
}

type fakeJob struct {
	JobState
	payload   []byte
	trace     []byte
	pending   int // final updates still answered 202
	artifacts []Artifact
	finished  chan struct{}
}

var defaultFailureReasons = []string{"unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
	"runner_system_failure", "missing_dependency_failure", "runner_unsupported", "job_execution_timeout",
	"archived_failure", "unmet_prerequisites", "scheduler_failure", "data_integrity_failure",
	"runner_configuration_error", "runner_external_dependency_failure", "image_pull_failure"}

// Enqueue queues a job for the next job request and returns its id.
func (s *Server) Enqueue(spec JobSpec) JobID {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	id := s.nextID
	j := &fakeJob{JobState: JobState{ID: id, Token: def(spec.Token, randomToken("glcbt-64_")), Status: "pending"}, finished: make(chan struct{})}
	if spec.Payload != nil {
		j.payload = spec.Payload(id, j.Token)
	} else {
		j.payload = s.buildPayload(id, j.Token, spec)
	}
	s.jobs[id] = j
	s.queue = append(s.queue, id)
	s.bumpLocked()
	return id
}

func (s *Server) bumpLocked() {
	s.lastUpdate++
	close(s.changed)
	s.changed = make(chan struct{})
}

func def(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func (s *Server) buildPayload(id JobID, token string, spec JobSpec) []byte {
	project := def(spec.Project, "platform/web-app")
	ref := def(spec.Ref, "main")
	sha := def(spec.SHA, "3f1c2a9d8b7e6f5a4c3b2a1908f7e6d5c4b3a291")
	timeout := int64(spec.Timeout / time.Second)
	if timeout == 0 {
		timeout = 3600
	}
	u, _ := url.Parse(s.URL)
	repoURL := fmt.Sprintf("%s://gitlab-ci-token:%s@%s/%s.git", u.Scheme, token, u.Host, project)
	image := map[string]any{"name": def(spec.Image, "alpine:3.20"), "entrypoint": []string{}, "ports": []any{}, "pull_policy": spec.PullPolicy}
	v := func(key, value string, public, masked bool) map[string]any {
		return map[string]any{"key": key, "value": value, "public": public, "masked": masked}
	}
	vars := []map[string]any{
		v("CI_JOB_ID", strconv.FormatInt(id, 10), true, false),
		v("CI_JOB_TOKEN", token, false, true),
		v("CI_PROJECT_PATH", project, true, false),
		v("CI_COMMIT_REF_NAME", ref, true, false),
		v("CI_COMMIT_SHA", sha, true, false),
		v("CI_COMMIT_REF_PROTECTED", strconv.FormatBool(spec.Protected), true, false),
		v("CI_SERVER_URL", s.URL, true, false),
	}
	if spec.Environment != "" {
		vars = append(vars, v("CI_ENVIRONMENT_NAME", spec.Environment, true, false))
	}
	for _, x := range spec.Variables {
		m := v(x.Key, x.Value, x.Public, x.Masked)
		if x.File {
			m["file"] = true
		}
		if x.Raw {
			m["raw"] = true
		}
		vars = append(vars, m)
	}
	if spec.Secrets != "" {
		vars = append(vars, v("AIRLOCK_SECRETS", spec.Secrets, false, false))
	}
	if spec.Egress != "" {
		vars = append(vars, v("AIRLOCK_EGRESS", spec.Egress, false, false))
	}
	script := spec.Script
	if script == nil {
		script = []string{"echo hello"}
	}
	steps := []map[string]any{{"name": "script", "script": script, "timeout": timeout, "when": "on_success", "allow_failure": false}}
	if len(spec.AfterScript) > 0 {
		steps = append(steps, map[string]any{"name": "after_script", "script": spec.AfterScript, "timeout": 300, "when": "always", "allow_failure": true})
	}
	reasons := spec.FailureReasons
	if reasons == nil {
		reasons = defaultFailureReasons
	}
	artifacts := []any{}
	for _, a := range spec.Artifacts {
		artifacts = append(artifacts, a)
	}
	caches := []any{}
	for _, c := range spec.Cache {
		caches = append(caches, c)
	}
	services := []any{}
	for _, sv := range spec.Services {
		services = append(services, sv)
	}
	deps := []any{}
	for _, d := range spec.Dependencies {
		// The token is the running job's own (research §4).
		deps = append(deps, map[string]any{"id": d.ID, "name": d.Name, "token": token,
			"artifacts_file": map[string]any{"filename": "artifacts.zip", "size": 1}})
	}
	p := map[string]any{
		"id":              id,
		"token":           token,
		"allow_git_fetch": true,
		"job_info": map[string]any{
			"id": id, "name": def(spec.Name, "test-job"), "stage": def(spec.Stage, "test"), "pipeline_id": 912,
			"project_id": 44, "project_name": project[strings.LastIndexByte(project, '/')+1:], "project_full_path": project,
			"namespace_id": 12, "root_namespace_id": 3, "user_id": 5, "time_in_queue_seconds": 1,
		},
		"git_info": map[string]any{
			"repo_url": repoURL, "ref": ref, "sha": sha, "before_sha": strings.Repeat("0", 40), "ref_type": "branch",
			"refspecs": []string{"+refs/heads/" + ref + ":refs/remotes/origin/" + ref}, "depth": 20,
			"repo_object_format": "sha1", "protected": spec.Protected,
		},
		"runner_info":  map[string]any{"timeout": timeout, "runner_session_url": nil},
		"variables":    vars,
		"steps":        steps,
		"hooks":        []any{},
		"image":        image,
		"services":     services,
		"artifacts":    artifacts,
		"cache":        caches,
		"credentials":  []any{map[string]any{"type": "registry", "url": def(spec.Registry, u.Host), "username": "gitlab-ci-token", "password": token}},
		"dependencies": deps,
		"features":     map[string]any{"trace_sections": true, "failure_reasons": reasons, "token_mask_prefixes": []string{"glpat-", "glcbt-"}},
	}
	if spec.User != "" {
		image["executor_opts"] = map[string]any{"docker": map[string]any{"user": spec.User}}
	}
	if spec.GitLabSecrets != nil {
		p["secrets"] = spec.GitLabSecrets
	}
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // only maps of plain values
	}
	return b
}

func (s *Server) handleRequestJob(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Content-Type") != "application/json" || r.ContentLength > 32<<10 {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "Workhorse wants an application/json body of at most 32 KiB"})
		return
	}
	var in struct {
		Token      string `json:"token"`
		LastUpdate string `json:"last_update"`
		SystemID   string `json:"system_id"`
	}
	if !decodeBody(r, &in) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid body"})
		return
	}
	var deadline <-chan time.Time
	for held := false; ; held = true {
		s.mu.Lock()
		if s.runners[in.Token] == nil {
			s.mu.Unlock()
			writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
			return
		}
		current := strconv.FormatInt(s.lastUpdate, 10)
		if r.Context().Err() != nil {
			// The runner gave up the request (Workhorse forwards nothing
			// to Rails then): no job is assigned to it.
			s.mu.Unlock()
			return
		}
		if len(s.queue) > 0 {
			id := s.queue[0]
			s.queue = s.queue[1:]
			j := s.jobs[id]
			j.Status = "running"
			payload := j.payload
			s.mu.Unlock()
			w.Header().Set("X-GitLab-Last-Update", current)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write(payload)
			return
		}
		if held || s.longPoll <= 0 || in.LastUpdate != current {
			s.mu.Unlock()
			w.Header().Set("X-GitLab-Last-Update", current)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if deadline == nil {
			t := time.NewTimer(s.longPoll)
			defer t.Stop()
			deadline = t.C
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
		case <-s.closed:
		case <-r.Context().Done():
			return
		}
	}
}

// Cancel cancels a job from the server side: a running job goes to
// canceling (Job-Status on its next trace response), then canceled when
// the runner reports its final state; a pending job is canceled at once.
func (s *Server) Cancel(id JobID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return
	}
	switch j.Status {
	case "running":
		j.Status = "canceling"
	case "pending":
		s.finishLocked(j, "canceled")
	}
}

// ForceCancel cancels a job at once: its trace and updates are then
// refused with Job-Status canceled.
func (s *Server) ForceCancel(id JobID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil && !j.Finished {
		s.finishLocked(j, "canceled")
	}
}

func (s *Server) finishLocked(j *fakeJob, status string) {
	j.Status = status
	if !j.Finished {
		j.Finished = true
		close(j.finished)
	}
	for i, q := range s.queue {
		if q == j.ID {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			break
		}
	}
}

// Job returns the state of job id.
func (s *Server) Job(id JobID) JobState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil {
		return j.JobState
	}
	return JobState{}
}

// Trace returns the stored trace of job id.
func (s *Server) Trace(id JobID) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil {
		return append([]byte(nil), j.trace...)
	}
	return nil
}

// Artifacts returns the artifacts uploaded for job id.
func (s *Server) Artifacts(id JobID) []Artifact {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil {
		return append([]Artifact(nil), j.artifacts...)
	}
	return nil
}

// WaitFinished waits until job id has its final state (or ctx ends).
func (s *Server) WaitFinished(ctx context.Context, id JobID) (JobState, error) {
	s.mu.Lock()
	j := s.jobs[id]
	s.mu.Unlock()
	if j == nil {
		return JobState{}, fmt.Errorf("waiting for job %d: no such job", id)
	}
	select {
	case <-j.finished:
		return s.Job(id), nil
	case <-ctx.Done():
		return s.Job(id), fmt.Errorf("waiting for job %d: %w", id, ctx.Err())
	}
}

// RespondAccepted answers the next n final updates of job id with 202
// (trace still persisting).
func (s *Server) RespondAccepted(id JobID, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil {
		j.pending = n
	}
}

// TruncateTrace makes the fake lose all but the first n stored trace bytes,
// so that the runner's next PATCH leaves a gap and gets a 416.
func (s *Server) TruncateTrace(id JobID, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil && n < len(j.trace) {
		j.trace = j.trace[:n]
	}
}

// CorruptTrace flips a stored trace byte, so that the final update's
// checksum mismatches (412).
func (s *Server) CorruptTrace(id JobID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil && len(j.trace) > 0 {
		j.trace = append([]byte(nil), j.trace...)
		j.trace[len(j.trace)/2] ^= 0x20
	}
}
