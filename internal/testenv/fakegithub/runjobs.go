package fakegithub

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// encryptBody encrypts a message body as the service does when the session
// has a key: AES-CBC, PKCS#7, a UTF-8 BOM in front; iv and body base64.
func encryptBody(key []byte, body string) (string, string) {
	pt := append([]byte("\ufeff"), body...)
	pad := aes.BlockSize - len(pt)%aes.BlockSize
	pt = append(pt, bytes.Repeat([]byte{byte(pad)}, pad)...)
	iv := make([]byte, aes.BlockSize)
	_, _ = rand.Read(iv)
	block, _ := aes.NewCipher(key)
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, pt)
	return base64.StdEncoding.EncodeToString(iv), base64.StdEncoding.EncodeToString(ct)
}

func mustKey() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}

func guid() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// Step is one step of a fake workflow job.
type Step struct {
	ID              string // default: a fresh GUID
	Name            string // display name
	Run             string // script (a run step)
	Uses            string // "owner/repo@ref", "./path" or "docker://image" (an action step)
	With            map[string]string
	Env             map[string]string
	If              string // the condition as GitHub sends it; default "success()"
	ContinueOnError bool
	TimeoutMinutes  float64
}

// JobSpec describes a workflow job the fake queues.
type JobSpec struct {
	Name      string
	Labels    []string // runs-on; default [self-hosted]
	Repo      string   // owner/repo; default acme/app
	Ref       string   // default refs/heads/main
	EventName string   // default push
	Event     map[string]any
	Env       map[string]string // job env
	Secrets   map[string]string // isSecret variables
	Container string            // job container image
	Steps     []Step
}

// Job is a job the fake holds, as the runner side left it.
type Job struct {
	ID, PlanID, RequestID string
	Token                 string // the job token
	GitHubToken           string // system.github.token
	Spec                  JobSpec
	Runner                int64
	State                 string // queued, assigned, acquired, completed
	Acquisitions          int
	Renewals              int
	LockedUntil           time.Time
	Conclusion            string
	Completion            map[string]any // the completejob body
	StepUpdates           [][]StepUpdate // every WorkflowStepsUpdate, in order
	ChangeOrders          []int
	StepLogs              map[string]string // step id -> uploaded log
	Summaries             map[string]string // step id -> uploaded GITHUB_STEP_SUMMARY
	FeedLines             []FeedLine        // what the live console received
	JobLog                string
	Diag                  string
	Cancelled             bool
	FirstRenewBeforeLog   bool // the first renewjob came before any log or step update
	sawOutput             bool
}

// StepUpdate is one step's state in a WorkflowStepsUpdate.
type StepUpdate struct {
	ExternalID  string `json:"external_id"`
	Number      int    `json:"number"`
	Name        string `json:"name"`
	Status      int    `json:"status"`
	Conclusion  int    `json:"conclusion"`
	StartedAt   string `json:"started_at"`
	CompletedAt string `json:"completed_at"`
}

type blob struct {
	job    *Job
	kind   string // step, job, diag
	step   string
	sig    string
	data   []byte
	sealed bool
	made   bool
}

// QueueJob queues a workflow job for any runner whose labels match.
func (f *Runners) QueueJob(spec JobSpec) *Job {
	if spec.Repo == "" {
		spec.Repo = "acme/app"
	}
	if spec.Ref == "" {
		spec.Ref = "refs/heads/main"
	}
	if spec.EventName == "" {
		spec.EventName = "push"
	}
	if len(spec.Labels) == 0 {
		spec.Labels = []string{"self-hosted"}
	}
	for i := range spec.Steps {
		if spec.Steps[i].ID == "" {
			spec.Steps[i].ID = guid()
		}
	}
	j := &Job{ID: guid(), PlanID: guid(), RequestID: strconv.Itoa(5000 + len(f.jobs)), Token: "eyJhbGciOiJSUzI1NiJ9.job" + randToken()[4:],
		GitHubToken: randToken(), Spec: spec, State: "queued", StepLogs: map[string]string{}, Summaries: map[string]string{}}
	f.mu.Lock()
	f.jobs = append(f.jobs, j)
	f.jobTokens[j.Token] = j
	f.broadcast()
	f.mu.Unlock()
	return j
}

// Job returns a snapshot of a job.
func (f *Runners) Job(id string) Job {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, j := range f.jobs {
		if j.ID == id {
			c := *j
			c.StepLogs = map[string]string{}
			for k, v := range j.StepLogs {
				c.StepLogs[k] = v
			}
			c.StepUpdates = slices.Clone(j.StepUpdates)
			c.Summaries = maps.Clone(j.Summaries)
			c.FeedLines = slices.Clone(j.FeedLines)
			return c
		}
	}
	return Job{}
}

// WaitJob waits until the job reaches state (or the timeout passes) and
// returns its snapshot.
func (f *Runners) WaitJob(id, state string, timeout time.Duration) (Job, bool) {
	deadline := time.Now().Add(timeout)
	for {
		f.mu.Lock()
		wake := f.wake
		f.mu.Unlock()
		if j := f.Job(id); j.State == state {
			return j, true
		}
		if time.Now().After(deadline) {
			return f.Job(id), false
		}
		select {
		case <-wake:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Cancel cancels a job as a user would: the runner running it receives a
// JobCancellation on its next poll.
func (f *Runners) Cancel(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, j := range f.jobs {
		if j.ID != id {
			continue
		}
		j.Cancelled = true
		if j.State == "queued" {
			j.State, j.Conclusion = "completed", "canceled"
		}
		for _, s := range f.sessions {
			if s.runner == j.Runner {
				body, _ := json.Marshal(map[string]string{"jobId": j.ID, "timeout": "00:05:00"})
				s.pending = append(s.pending, brokerMessage{ID: f.nextMsg(), Type: "JobCancellation", Body: string(body)})
			}
		}
	}
	f.broadcast()
}

// ExpireJob drops a running job on the service side (its lock expired or
// it was deleted): renewjob and completejob answer 404.
func (f *Runners) ExpireJob(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, j := range f.jobs {
		if j.ID == id {
			j.State = "expired"
		}
	}
	f.broadcast()
}

func (f *Runners) lockDuration() time.Duration {
	if f.LockDuration > 0 {
		return f.LockDuration
	}
	return 10 * time.Minute
}

func (f *Runners) nextMsg() int64 { f.nextID++; return f.nextID }

func (f *Runners) createSession(w http.ResponseWriter, r *http.Request) {
	run := f.runnerOf(w, r)
	if run == nil {
		return
	}
	var req struct {
		SessionID string `json:"sessionId"`
		OwnerName string `json:"ownerName"`
		Agent     struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
		} `json:"agent"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		brokerError(w, http.StatusBadRequest, "InvalidRequest", "unreadable session")
		return
	}
	if req.Agent.ID != run.ID {
		f.violation("session for agent %d with the token of runner %d", req.Agent.ID, run.ID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conflicts > 0 {
		f.conflicts--
		brokerError(w, http.StatusConflict, "SessionConflict", "A session for this runner already exists.")
		return
	}
	for _, s := range f.sessions {
		if s.runner == run.ID {
			brokerError(w, http.StatusConflict, "SessionConflict", "A session for this runner already exists.")
			return
		}
	}
	s := &fakeSession{id: guid(), runner: run.ID}
	f.sessions[s.id] = s
	run.Sessions++
	ans := map[string]any{"sessionId": s.id, "ownerName": req.OwnerName,
		"agent": map[string]any{"id": run.ID, "name": run.Name}, "useFipsEncryption": false}
	if f.EncryptMessages {
		s.aesKey = make([]byte, 32)
		_, _ = rand.Read(s.aesKey)
		wrapped, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, run.Key, s.aesKey, nil)
		if err != nil {
			panic(err)
		}
		ans["encryptionKey"] = map[string]any{"encrypted": true, "value": wrapped}
	}
	writeJSON(w, http.StatusOK, ans)
}

// DropSessions forgets every open session, as GitHub does when a runner
// stopped polling without deleting its session.
func (f *Runners) DropSessions() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessions = map[string]*fakeSession{}
	f.broadcast()
}

// Sessions is how many sessions are open.
func (f *Runners) Sessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

func (f *Runners) deleteSession(w http.ResponseWriter, r *http.Request) {
	run := f.runnerOf(w, r)
	if run == nil {
		return
	}
	f.mu.Lock()
	for id, s := range f.sessions {
		if s.runner == run.ID && (r.PathValue("id") == "" || r.PathValue("id") == id) {
			delete(f.sessions, id)
		}
	}
	f.requeue(run)
	f.broadcast()
	f.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// requeue puts requests handed to run but never acquired back in the
// queue, under f.mu.
func (f *Runners) requeue(run *Runner) {
	for _, j := range f.jobs {
		if j.Runner == run.ID && j.State == "assigned" {
			j.State, j.Runner = "queued", 0
		}
	}
}

// dropRunner deletes run with its sessions, under f.mu.
func (f *Runners) dropRunner(run *Runner) {
	run.Deleted = true
	for id, s := range f.sessions {
		if s.runner == run.ID {
			delete(f.sessions, id)
		}
	}
	f.requeue(run)
	f.broadcast()
}

func matches(run *Runner, labels []string) bool {
	for _, l := range labels {
		if !slices.ContainsFunc(run.Labels, func(x string) bool { return strings.EqualFold(x, l) }) {
			return false
		}
	}
	return true
}

// nextMessage returns what a poll of runner run in session s gets, under f.mu.
func (f *Runners) nextMessage(s *fakeSession, run *Runner, busy bool) *brokerMessage {
	if len(s.pending) > 0 {
		m := s.pending[0]
		s.pending = s.pending[1:]
		return &m
	}
	if busy && !run.Ephemeral {
		return nil
	}
	for _, j := range f.jobs {
		if j.State != "queued" || !matches(run, j.Spec.Labels) {
			continue
		}
		// A busy ephemeral runner is still offered a job: it must refuse it.
		if busy {
			taken := false
			for _, o := range f.jobs {
				if o.Runner == run.ID && o.State == "assigned" {
					taken = true
				}
			}
			if taken {
				return nil
			}
		}
		j.State, j.Runner = "assigned", run.ID
		body, _ := json.Marshal(map[string]any{"id": j.ID, "runner_request_id": j.RequestID, "run_service_url": f.URL + "/run/",
			"should_acknowledge": f.AcknowledgeJobs, "billing_owner_id": "acme"})
		return &brokerMessage{ID: f.nextMsg(), Type: "RunnerJobRequest", Body: string(body)}
	}
	return nil
}

func (f *Runners) brokerMessage(w http.ResponseWriter, r *http.Request) {
	run := f.runnerOf(w, r)
	if run == nil {
		return
	}
	q := r.URL.Query()
	status := q.Get("status")
	if status != "Online" && status != "Busy" {
		f.violation("poll with status %q", status)
	}
	for _, k := range []string{"runnerVersion", "os", "architecture"} {
		if q.Get(k) == "" {
			f.violation("poll without %s", k)
		}
	}
	deadline := time.After(f.PollHold)
	for {
		f.mu.Lock()
		s := f.sessions[q.Get("sessionId")]
		if s == nil || s.runner != run.ID {
			f.mu.Unlock()
			brokerError(w, http.StatusNotFound, "RunnerSessionInvalid", "session not found")
			return
		}
		run.Status = status
		if run.Deleted {
			f.mu.Unlock()
			brokerError(w, http.StatusNotFound, "RunnerNotFound", "runner not found")
			return
		}
		m := f.nextMessage(s, run, status == "Busy")
		wake := f.wake
		f.mu.Unlock()
		if m != nil {
			if s.aesKey != nil {
				iv, body := encryptBody(s.aesKey, m.Body)
				writeJSON(w, http.StatusOK, map[string]any{"messageId": m.ID, "messageType": m.Type, "body": body, "iv": iv})
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"messageId": m.ID, "messageType": m.Type, "body": m.Body, "iv": nil})
			return
		}
		select {
		case <-wake:
		case <-deadline:
			f.emptyAnswer(w)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// emptyAnswer cycles through the empty-poll forms clients must accept.
func (f *Runners) emptyAnswer(w http.ResponseWriter) {
	f.mu.Lock()
	f.emptyCycle++
	n := f.emptyCycle
	f.mu.Unlock()
	switch n % 3 {
	case 0:
		w.WriteHeader(http.StatusNoContent)
	case 1:
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusAccepted)
	default:
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
	}
}

// pipelinesMessage: a migrated service answers every pipelines poll with
// BrokerMigration at once.
func (f *Runners) pipelinesMessage(w http.ResponseWriter, r *http.Request) {
	if f.runnerOf(w, r) == nil {
		return
	}
	f.mu.Lock()
	id := f.nextMsg()
	f.mu.Unlock()
	body, _ := json.Marshal(map[string]string{"brokerBaseUrl": f.URL + "/broker/"})
	writeJSON(w, http.StatusOK, map[string]any{"messageId": id, "messageType": "BrokerMigration", "body": string(body)})
}

func (f *Runners) deletePipelinesMessage(w http.ResponseWriter, r *http.Request) {
	if f.runnerOf(w, r) == nil {
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (f *Runners) acknowledge(w http.ResponseWriter, r *http.Request) {
	if f.runnerOf(w, r) == nil {
		return
	}
	var req struct {
		RunnerRequestID string `json:"runnerRequestId"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, j := range f.jobs {
		if j.RequestID == req.RunnerRequestID && j.State == "assigned" {
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	brokerError(w, http.StatusNotFound, "AcknowledgeJobNotFound", "job request not found")
}

func runServiceError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]any{"source": "actions-run-service", "statusCode": code, "errorMessage": msg})
}

func (f *Runners) acquireJob(w http.ResponseWriter, r *http.Request) {
	run := f.runnerOf(w, r)
	if run == nil {
		return
	}
	var req struct {
		JobMessageID string `json:"jobMessageId"`
		RunnerOS     string `json:"runnerOS"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.JobMessageID == "" {
		runServiceError(w, http.StatusUnprocessableEntity, "jobMessageId is required")
		return
	}
	f.mu.Lock()
	var j *Job
	for _, x := range f.jobs {
		if x.RequestID == req.JobMessageID {
			j = x
		}
	}
	switch {
	case j == nil:
		f.mu.Unlock()
		runServiceError(w, http.StatusNotFound, "job not found")
		return
	case j.State != "assigned" || j.Runner != run.ID:
		f.mu.Unlock()
		runServiceError(w, http.StatusConflict, "job already acquired")
		return
	}
	j.State = "acquired"
	j.Acquisitions++
	j.LockedUntil = time.Now().Add(f.lockDuration())
	msg := f.jobMessage(j, run)
	f.broadcast()
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, msg)
}

// jobOf authenticates a job token.
func (f *Runners) jobOf(w http.ResponseWriter, r *http.Request) *Job {
	f.mu.Lock()
	j := f.jobTokens[bearer(r)]
	_, isRunner := f.oauth[bearer(r)]
	f.mu.Unlock()
	if j == nil {
		if isRunner {
			f.violation("%s called with the runner token instead of the job token", r.URL.Path)
		}
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	}
	return j
}

func (f *Runners) renewJob(w http.ResponseWriter, r *http.Request) {
	j := f.jobOf(w, r)
	if j == nil {
		return
	}
	var req struct {
		PlanID string `json:"planId"`
		JobID  string `json:"jobId"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.PlanID != j.PlanID || req.JobID != j.ID {
		runServiceError(w, http.StatusNotFound, "job not found")
		return
	}
	if f.failRenews > 0 {
		f.failRenews--
		runServiceError(w, http.StatusServiceUnavailable, "try again")
		return
	}
	if j.State != "acquired" {
		runServiceError(w, http.StatusNotFound, "job is not running")
		return
	}
	if j.Renewals == 0 && !j.sawOutput {
		j.FirstRenewBeforeLog = true
	}
	j.Renewals++
	j.LockedUntil = time.Now().Add(f.lockDuration())
	writeJSON(w, http.StatusOK, map[string]string{"lockedUntil": j.LockedUntil.UTC().Format(time.RFC3339Nano)})
}

func (f *Runners) completeJob(w http.ResponseWriter, r *http.Request) {
	j := f.jobOf(w, r)
	if j == nil {
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		runServiceError(w, http.StatusBadRequest, "unreadable body")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if body["planId"] != j.PlanID || body["jobId"] != j.ID {
		runServiceError(w, http.StatusNotFound, "job not found")
		return
	}
	if j.State != "acquired" {
		runServiceError(w, http.StatusNotFound, "job is not running")
		return
	}
	c, _ := body["conclusion"].(string)
	switch c {
	case "succeeded", "failed", "canceled", "skipped", "abandoned", "succeededWithIssues":
	default:
		f.violation("completejob with conclusion %q", c)
	}
	j.State, j.Conclusion, j.Completion = "completed", c, body
	// GitHub deletes an ephemeral runner after its job.
	if run := f.runners[j.Runner]; run != nil && run.Ephemeral {
		f.dropRunner(run)
	}
	f.broadcast()
	w.WriteHeader(http.StatusOK)
}

func (f *Runners) results(w http.ResponseWriter, r *http.Request) {
	j := f.jobOf(w, r)
	if j == nil {
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, `{"code":"malformed","msg":"unreadable"}`, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if body["workflow_run_backend_id"] != j.PlanID || body["workflow_job_run_backend_id"] != j.ID {
		writeJSON(w, http.StatusNotFound, map[string]string{"code": "not_found", "msg": "job not found"})
		return
	}
	j.sawOutput = true
	if j.Renewals == 0 {
		f.violation("results %s before the first lock renewal", r.PathValue("method"))
	}
	step, _ := body["step_backend_id"].(string)
	newBlob := func(kind string) string {
		key := fmt.Sprintf("%s/%s/%s-%s", j.PlanID, j.ID, kind, guid())
		b := &blob{job: j, kind: kind, step: step, sig: randToken()[4:]}
		f.blobs[key] = b
		return f.URL + "/blob/" + key + "?sv=2025-01-01&sr=b&sig=" + b.sig
	}
	switch m := r.PathValue("method"); m {
	case "GetStepLogsSignedBlobURL", "GetJobLogsSignedBlobURL":
		kind := "job"
		if m == "GetStepLogsSignedBlobURL" {
			if step == "" {
				f.violation("%s without step_backend_id", m)
			}
			kind = "step"
		}
		writeJSON(w, http.StatusOK, map[string]any{"logs_url": newBlob(kind), "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE", "soft_size_limit": 1 << 30})
	case "GetStepSummarySignedBlobURL":
		writeJSON(w, http.StatusOK, map[string]any{"summary_url": newBlob("summary"), "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE", "soft_size_limit": 1 << 20})
	case "CreateStepSummaryMetadata":
		found := false
		for _, b := range f.blobs {
			if b.job == j && b.kind == "summary" && b.step == step && b.sealed {
				found = true
				j.Summaries[step] = string(b.data)
			}
		}
		if !found {
			f.violation("%s for a summary that was not uploaded", r.PathValue("method"))
		}
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case "GetJobDiagLogsSignedBlobURL":
		writeJSON(w, http.StatusOK, map[string]any{"diag_logs_url": newBlob("diag"), "blob_storage_type": "BLOB_STORAGE_TYPE_AZURE"})
	case "CreateStepLogsMetadata", "CreateJobLogsMetadata":
		kind := "job"
		if m == "CreateStepLogsMetadata" {
			kind = "step"
		}
		found := false
		for _, b := range f.blobs {
			if b.job == j && b.kind == kind && b.step == step && b.sealed {
				found = true
				if kind == "step" {
					j.StepLogs[step] = string(b.data)
				} else {
					j.JobLog = string(b.data)
				}
			}
		}
		if !found {
			f.violation("%s for a log that was not uploaded and sealed", m)
		}
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case "WorkflowStepsUpdate":
		raw, _ := json.Marshal(body["steps"])
		var ups []StepUpdate
		_ = json.Unmarshal(raw, &ups)
		order, _ := body["change_order"].(float64)
		if n := len(j.ChangeOrders); n > 0 && int(order) <= j.ChangeOrders[n-1] {
			f.violation("change_order %d does not increase (last %d)", int(order), j.ChangeOrders[n-1])
		}
		for _, u := range ups {
			if u.Status != 3 && u.Status != 5 && u.Status != 6 {
				f.violation("step %s status %d: not 3, 5 or 6", u.ExternalID, u.Status)
			}
		}
		j.ChangeOrders = append(j.ChangeOrders, int(order))
		j.StepUpdates = append(j.StepUpdates, ups)
		writeJSON(w, http.StatusOK, map[string]any{})
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"code": "bad_route", "msg": "no handler for " + m})
	}
}

func (f *Runners) putBlob(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "" {
		f.violation("blob PUT with an Authorization header")
	}
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.blobs[r.PathValue("key")]
	if b == nil || r.URL.Query().Get("sig") != b.sig {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	q := r.URL.Query()
	switch {
	case q.Get("comp") == "appendblock":
		if !b.made || b.sealed {
			w.WriteHeader(http.StatusConflict)
			return
		}
		b.data = append(b.data, body...)
		if q.Get("seal") == "true" {
			b.sealed = true
		}
	case r.Header.Get("X-Ms-Blob-Type") == "AppendBlob":
		b.made = true
	case r.Header.Get("X-Ms-Blob-Type") == "BlockBlob":
		b.made, b.sealed, b.data = true, true, body
		if b.kind == "diag" {
			b.job.Diag = string(body)
		}
	default:
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusCreated)
}
