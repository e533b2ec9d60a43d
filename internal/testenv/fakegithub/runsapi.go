package fakegithub

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// The REST view of the runner-protocol fake's queued jobs, for autoscalers
// that poll (research: "REST for fleet management and queued-job
// discovery"): each queued job is one workflow run with one job, both
// numbered by the job's RequestID.
//
//	GET /api/v3/repos/{owner}/{repo}/actions/runs?status=queued  {total_count, workflow_runs}
//	GET /api/v3/repos/{owner}/{repo}/actions/runs/{id}           {id, event, status, repository, head_repository}
//	GET /api/v3/repos/{owner}/{repo}/actions/runs/{id}/jobs      {total_count, jobs}
//
// They need the admin token, like the other REST endpoints of this fake.
func (f *Runners) registerRuns(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v3/repos/{owner}/{repo}/actions/runs", f.restRuns)
	mux.HandleFunc("GET /api/v3/repos/{owner}/{repo}/actions/runs/{id}", f.restRun)
	mux.HandleFunc("GET /api/v3/repos/{owner}/{repo}/actions/runs/{id}/jobs", f.restRunJobs)
}

// restStatus is the REST status of a job of the fake.
func restStatus(j *Job) string {
	switch j.State {
	case "queued":
		return "queued"
	case "completed":
		return "completed"
	}
	return "in_progress"
}

func (f *Runners) restRunJSON(j *Job) map[string]any {
	id, _ := strconv.ParseInt(j.RequestID, 10, 64)
	head := j.Spec.Repo
	if pr, ok := j.Spec.Event["pull_request"].(map[string]any); ok {
		if h, ok := pr["head"].(map[string]any); ok {
			if r, ok := h["repo"].(map[string]any); ok {
				if n, ok := r["full_name"].(string); ok {
					head = n
				}
			}
		}
	}
	return map[string]any{"id": id, "event": j.Spec.EventName, "status": restStatus(j),
		"repository": map[string]any{"full_name": j.Spec.Repo}, "head_repository": map[string]any{"full_name": head}}
}

func (f *Runners) restJobs(r *http.Request) []*Job {
	repo := r.PathValue("owner") + "/" + r.PathValue("repo")
	var out []*Job
	for _, j := range f.jobs {
		if strings.EqualFold(j.Spec.Repo, repo) {
			out = append(out, j)
		}
	}
	return out
}

func (f *Runners) restRuns(w http.ResponseWriter, r *http.Request) {
	if bearer(r) != f.AdminToken {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	want := r.URL.Query().Get("status")
	list := []map[string]any{}
	for _, j := range f.restJobs(r) {
		if want == "" || restStatus(j) == want {
			list = append(list, f.restRunJSON(j))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"total_count": len(list), "workflow_runs": list})
}

func (f *Runners) restJobByRun(w http.ResponseWriter, r *http.Request) *Job {
	if bearer(r) != f.AdminToken {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return nil
	}
	i := slices.IndexFunc(f.restJobs(r), func(j *Job) bool { return j.RequestID == r.PathValue("id") })
	if i < 0 {
		ghError(w, http.StatusNotFound, "Not Found")
		return nil
	}
	return f.restJobs(r)[i]
}

func (f *Runners) restRun(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if j := f.restJobByRun(w, r); j != nil {
		writeJSON(w, http.StatusOK, f.restRunJSON(j))
	}
}

func (f *Runners) restRunJobs(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.restJobByRun(w, r)
	if j == nil {
		return
	}
	id, _ := strconv.ParseInt(j.RequestID, 10, 64)
	writeJSON(w, http.StatusOK, map[string]any{"total_count": 1, "jobs": []map[string]any{{
		"id": id, "run_id": id, "name": j.Spec.Name, "status": restStatus(j), "labels": j.Spec.Labels}}})
}
