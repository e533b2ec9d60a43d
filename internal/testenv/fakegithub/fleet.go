package fakegithub

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The runner-fleet REST endpoints of GitHub (research: "REST for fleet
// management and queued-job discovery"), served beside the App endpoints:
//
//	POST   /orgs/{org}/actions/runners/generate-jitconfig      201 {runner, encoded_jit_config}
//	POST   /repos/{o}/{r}/actions/runners/generate-jitconfig   (422 without runner_group_id, 409 on a taken name)
//	GET    {scope}/actions/runners?per_page&page               {total_count, runners}
//	GET    {scope}/actions/runners/{id}                        404 when gone
//	DELETE {scope}/actions/runners/{id}                        204; 422 while busy
//	GET    /repos/{o}/{r}/actions/runs?status=queued           {total_count, workflow_runs}
//	GET    /repos/{o}/{r}/actions/runs/{id}                    {id, event, status, repository, head_repository}
//	GET    /repos/{o}/{r}/actions/runs/{id}/jobs               {total_count, jobs}
//
// Every call needs a live installation token of the App (401 otherwise).

// FleetRunner is a self-hosted runner registered with the fake.
type FleetRunner struct {
	ID      int64
	Name    string
	Scope   string // "org:acme" or "repo:acme/app"
	Labels  []string
	Group   int64
	Status  string // online | offline
	Busy    bool
	JIT     bool
	Deleted bool
	// Job is the workflow job the runner was given (Assign).
	Job int64
}

// WorkflowRun is a workflow run with its jobs.
type WorkflowRun struct {
	ID       int64
	Repo     string // owner/name
	Event    string // push, pull_request, ...
	HeadRepo string // the head repository's full name (a fork's for fork PRs)
	Jobs     []*WorkflowJob
}

// WorkflowJob is a workflow job.
type WorkflowJob struct {
	ID     int64
	RunID  int64
	Name   string
	Labels []string
	Status string // queued | in_progress | completed
	Runner string
}

type fleet struct {
	nextRunner int64
	runners    map[int64]*FleetRunner
	runs       map[int64]*WorkflowRun
	jobs       map[int64]*WorkflowJob
	jitMade    int
}

func (a *App) registerFleet(mux *http.ServeMux) {
	a.fleet = fleet{nextRunner: 1000, runners: map[int64]*FleetRunner{}, runs: map[int64]*WorkflowRun{}, jobs: map[int64]*WorkflowJob{}}
	for _, prefix := range []string{"/orgs/{org}", "/repos/{owner}/{repo}"} {
		mux.HandleFunc("POST "+prefix+"/actions/runners/generate-jitconfig", a.authed(a.generateJIT))
		mux.HandleFunc("GET "+prefix+"/actions/runners", a.authed(a.listRunners))
		mux.HandleFunc("GET "+prefix+"/actions/runners/{id}", a.authed(a.getRunner))
		mux.HandleFunc("DELETE "+prefix+"/actions/runners/{id}", a.authed(a.deleteRunner))
	}
	mux.HandleFunc("GET /repos/{owner}/{repo}/actions/runs", a.authed(a.listRuns))
	mux.HandleFunc("GET /repos/{owner}/{repo}/actions/runs/{id}", a.authed(a.getRun))
	mux.HandleFunc("GET /repos/{owner}/{repo}/actions/runs/{id}/jobs", a.authed(a.runJobs))
}

// authed runs h under the lock when the request has a live installation
// token.
func (a *App) authed(h func(w http.ResponseWriter, r *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.live(r) == nil {
			ghError(w, http.StatusUnauthorized, "Bad credentials")
			return
		}
		h(w, r)
	}
}

func scopeOf(r *http.Request) string {
	if org := r.PathValue("org"); org != "" {
		return "org:" + org
	}
	return "repo:" + r.PathValue("owner") + "/" + r.PathValue("repo")
}

func writeREST(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (rn *FleetRunner) json() map[string]any {
	labels := []map[string]any{}
	for i, l := range append([]string{"self-hosted", "Linux", "X64"}, rn.Labels...) {
		typ := "custom"
		if i < 3 {
			typ = "read-only"
		}
		labels = append(labels, map[string]any{"id": i + 1, "name": l, "type": typ})
	}
	return map[string]any{"id": rn.ID, "name": rn.Name, "os": "Linux", "status": rn.Status, "busy": rn.Busy,
		"ephemeral": rn.JIT, "labels": labels}
}

// jitConfig renders an encoded JIT config of the documented shape: base64
// of a JSON object mapping the three file names to base64 file bytes. The
// key material is random bytes of the right shape, not a usable key.
func jitConfig(rn *FleetRunner, url string) string {
	runnerFile, _ := json.Marshal(map[string]any{
		"AgentId": strconv.FormatInt(rn.ID, 10), "AgentName": rn.Name, "PoolId": "1", "PoolName": "Default",
		"ServerUrl": url + "/pipelines/", "GitHubUrl": url, "WorkFolder": "_work",
		"UseV2Flow": true, "ServerUrlV2": url + "/broker/", "Ephemeral": "True", "DisableUpdate": "True",
	})
	creds, _ := json.Marshal(map[string]any{"Scheme": "OAuth", "Data": map[string]any{
		"clientId": fmt.Sprintf("client-%d", rn.ID), "authorizationUrl": url + "/_apis/oauth2/token/" + strconv.FormatInt(rn.ID, 10),
		"requireFipsCryptography": "True"}})
	rnd := make([]byte, 256)
	_, _ = rand.Read(rnd)
	rsaFile, _ := json.Marshal(map[string]string{"modulus": base64.StdEncoding.EncodeToString(rnd), "exponent": "AQAB"})
	files, _ := json.Marshal(map[string]string{
		".runner":                base64.StdEncoding.EncodeToString(runnerFile),
		".credentials":           base64.StdEncoding.EncodeToString(creds),
		".credentials_rsaparams": base64.StdEncoding.EncodeToString(rsaFile),
	})
	return base64.StdEncoding.EncodeToString(files)
}

func (a *App) generateJIT(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name          string   `json:"name"`
		RunnerGroupID int64    `json:"runner_group_id"`
		Labels        []string `json:"labels"`
		WorkFolder    string   `json:"work_folder"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		ghError(w, http.StatusBadRequest, "Problems parsing JSON")
		return
	}
	switch {
	case req.Name == "":
		ghError(w, http.StatusUnprocessableEntity, "Invalid request.\n\n\"name\" wasn't supplied.")
		return
	case req.RunnerGroupID == 0:
		ghError(w, http.StatusUnprocessableEntity, "Invalid request.\n\n\"runner_group_id\" wasn't supplied.")
		return
	case len(req.Labels) == 0 || len(req.Labels) > 100:
		ghError(w, http.StatusUnprocessableEntity, "Invalid request.\n\nlabels must have 1 to 100 entries.")
		return
	}
	if a.failJIT > 0 {
		a.failJIT--
		ghError(w, http.StatusServiceUnavailable, "Service Unavailable")
		return
	}
	scope := scopeOf(r)
	for _, rn := range a.fleet.runners {
		if !rn.Deleted && rn.Scope == scope && rn.Name == req.Name {
			ghError(w, http.StatusConflict, "Already exists - A runner with the name "+req.Name+" already exists.")
			return
		}
	}
	a.fleet.nextRunner++
	rn := &FleetRunner{ID: a.fleet.nextRunner, Name: req.Name, Scope: scope, Labels: req.Labels, Group: req.RunnerGroupID, Status: "offline", JIT: true}
	a.fleet.runners[rn.ID] = rn
	a.fleet.jitMade++
	writeREST(w, http.StatusCreated, map[string]any{"runner": rn.json(), "encoded_jit_config": jitConfig(rn, a.URL)})
}

func (a *App) scopeRunners(scope string) []*FleetRunner {
	var out []*FleetRunner
	for _, rn := range a.fleet.runners {
		if !rn.Deleted && rn.Scope == scope {
			out = append(out, rn)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (a *App) listRunners(w http.ResponseWriter, r *http.Request) {
	all := a.scopeRunners(scopeOf(r))
	if name := r.URL.Query().Get("name"); name != "" {
		all = slices.DeleteFunc(all, func(rn *FleetRunner) bool { return rn.Name != name })
	}
	per, _ := strconv.Atoi(r.URL.Query().Get("per_page"))
	if per <= 0 || per > 100 {
		per = 30
	}
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	if page <= 0 {
		page = 1
	}
	list := []map[string]any{}
	for i := (page - 1) * per; i < len(all) && i < page*per; i++ {
		list = append(list, all[i].json())
	}
	writeREST(w, http.StatusOK, map[string]any{"total_count": len(all), "runners": list})
}

func (a *App) runnerByPath(r *http.Request) *FleetRunner {
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	rn := a.fleet.runners[id]
	if rn == nil || rn.Deleted || rn.Scope != scopeOf(r) {
		return nil
	}
	return rn
}

func (a *App) getRunner(w http.ResponseWriter, r *http.Request) {
	rn := a.runnerByPath(r)
	if rn == nil {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	writeREST(w, http.StatusOK, rn.json())
}

func (a *App) deleteRunner(w http.ResponseWriter, r *http.Request) {
	rn := a.runnerByPath(r)
	if rn == nil {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	if rn.Busy {
		ghError(w, http.StatusUnprocessableEntity, "Bad request - Runner \""+rn.Name+"\" is still running a job\"")
		return
	}
	rn.Deleted = true
	w.WriteHeader(http.StatusNoContent)
}

func repoOf(r *http.Request) string { return r.PathValue("owner") + "/" + r.PathValue("repo") }

func (run *WorkflowRun) json() map[string]any {
	head := run.HeadRepo
	if head == "" {
		head = run.Repo
	}
	status := "completed"
	for _, j := range run.Jobs {
		if j.Status == "queued" {
			status = "queued"
			break
		}
		if j.Status == "in_progress" {
			status = "in_progress"
		}
	}
	return map[string]any{"id": run.ID, "event": run.Event, "status": status,
		"repository": map[string]any{"full_name": run.Repo}, "head_repository": map[string]any{"full_name": head}}
}

func (j *WorkflowJob) json() map[string]any {
	var runner any
	if j.Runner != "" {
		runner = j.Runner
	}
	return map[string]any{"id": j.ID, "run_id": j.RunID, "name": j.Name, "status": j.Status, "labels": j.Labels,
		"runner_name": runner, "created_at": time.Unix(j.ID, 0).UTC().Format(time.RFC3339)}
}

func (a *App) listRuns(w http.ResponseWriter, r *http.Request) {
	repo := repoOf(r)
	want := r.URL.Query().Get("status")
	list := []map[string]any{}
	ids := make([]int64, 0, len(a.fleet.runs))
	for id := range a.fleet.runs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		run := a.fleet.runs[id]
		if !strings.EqualFold(run.Repo, repo) {
			continue
		}
		js := run.json()
		if want != "" && js["status"] != want {
			continue
		}
		list = append(list, js)
	}
	writeREST(w, http.StatusOK, map[string]any{"total_count": len(list), "workflow_runs": list})
}

func (a *App) runByPath(r *http.Request) *WorkflowRun {
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	run := a.fleet.runs[id]
	if run == nil || !strings.EqualFold(run.Repo, repoOf(r)) {
		return nil
	}
	return run
}

func (a *App) getRun(w http.ResponseWriter, r *http.Request) {
	run := a.runByPath(r)
	if run == nil {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	writeREST(w, http.StatusOK, run.json())
}

func (a *App) runJobs(w http.ResponseWriter, r *http.Request) {
	run := a.runByPath(r)
	if run == nil {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	list := []map[string]any{}
	for _, j := range run.Jobs {
		list = append(list, j.json())
	}
	writeREST(w, http.StatusOK, map[string]any{"total_count": len(list), "jobs": list})
}

// AddRun queues a workflow run; its jobs start queued. The fake keeps
// run and its jobs: read them back through the fake's methods.
func (a *App) AddRun(run WorkflowRun) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := &run
	for _, j := range r.Jobs {
		j.RunID = r.ID
		if j.Status == "" {
			j.Status = "queued"
		}
		a.fleet.jobs[j.ID] = j
	}
	a.fleet.runs[r.ID] = r
}

// AddRunner registers a (persistent) runner directly, as another host or a
// person would have, and returns a copy of it.
func (a *App) AddRunner(scope, name, status string, busy bool, labels ...string) FleetRunner {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fleet.nextRunner++
	rn := &FleetRunner{ID: a.fleet.nextRunner, Name: name, Scope: scope, Status: status, Busy: busy, Labels: labels}
	a.fleet.runners[rn.ID] = rn
	return *rn
}

// JobStatus is a job's status ("" for an unknown job).
func (a *App) JobStatus(id int64) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if j := a.fleet.jobs[id]; j != nil {
		return j.Status
	}
	return ""
}

// Runners returns copies of the runners not deleted.
func (a *App) Runners() []FleetRunner {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []FleetRunner
	for _, rn := range a.fleet.runners {
		if !rn.Deleted {
			out = append(out, *rn)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// JITMade is how many JIT runners generate-jitconfig created.
func (a *App) JITMade() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fleet.jitMade
}

// FailJIT makes the next n generate-jitconfig calls answer 503.
func (a *App) FailJIT(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failJIT = n
}

// SetRunnerStatus sets a runner's status and busy flag.
func (a *App) SetRunnerStatus(name, status string, busy bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, rn := range a.fleet.runners {
		if rn.Name == name && !rn.Deleted {
			rn.Status, rn.Busy = status, busy
		}
	}
}

// Assign does what GitHub does when a runner comes online: it hands the
// runner the oldest queued job whose labels are all the runner's (the
// implicit self-hosted, linux and x64 included; case-insensitive). It
// returns the job, or nil when none matches.
func (a *App) Assign(runnerName string) *WorkflowJob {
	a.mu.Lock()
	defer a.mu.Unlock()
	var rn *FleetRunner
	for _, r := range a.fleet.runners {
		if r.Name == runnerName && !r.Deleted {
			rn = r
		}
	}
	if rn == nil {
		return nil
	}
	rn.Status = "online"
	have := map[string]bool{"self-hosted": true, "linux": true, "x64": true}
	for _, l := range rn.Labels {
		have[strings.ToLower(l)] = true
	}
	ids := make([]int64, 0, len(a.fleet.jobs))
	for id := range a.fleet.jobs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		j := a.fleet.jobs[id]
		if j.Status != "queued" {
			continue
		}
		ok := len(j.Labels) > 0
		for _, l := range j.Labels {
			ok = ok && have[strings.ToLower(l)]
		}
		if !ok {
			continue
		}
		j.Status, j.Runner = "in_progress", rn.Name
		rn.Busy, rn.Job = true, j.ID
		c := *j
		return &c
	}
	return nil
}

// Complete ends a job; its runner, if ephemeral, is removed as GitHub
// removes JIT runners after their job.
func (a *App) Complete(jobID int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	j := a.fleet.jobs[jobID]
	if j == nil {
		return
	}
	j.Status = "completed"
	for _, rn := range a.fleet.runners {
		if rn.Name == j.Runner {
			rn.Busy = false
			if rn.JIT {
				rn.Deleted = true
			}
		}
	}
}

// WorkflowJobPayload is the body of a workflow_job delivery for job.
func (a *App) WorkflowJobPayload(action string, jobID int64) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	j := a.fleet.jobs[jobID]
	run := a.fleet.runs[j.RunID]
	b, _ := json.Marshal(map[string]any{"action": action, "workflow_job": j.json(),
		"repository": map[string]any{"full_name": run.Repo}})
	return b
}

// Deliver posts a webhook delivery to url, signed with secret (nil: no
// signature header), and returns the status code.
func Deliver(t testing.TB, url string, secret []byte, event, delivery string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", delivery)
	if secret != nil {
		m := hmac.New(sha256.New, secret)
		m.Write(body)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(m.Sum(nil)))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("delivering %s %s: %v", event, delivery, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
