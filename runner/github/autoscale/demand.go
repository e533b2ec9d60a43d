package autoscale

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"
)

// queued is a workflow job waiting for a runner.
type queued struct {
	ID       int64
	RunID    int64
	Repo     string
	Name     string
	Labels   []string
	QueuedAt time.Time
	Via      string // "webhook" or "poll"
}

// demand is the set of queued jobs this host serves, oldest first.
type demand struct {
	mu      sync.Mutex
	jobs    map[int64]*queued
	serving map[int64]bool // a runner is being made for it
	// wake is signalled (never blocking) when a job is added.
	wake chan struct{}
}

func newDemand() *demand {
	return &demand{jobs: map[int64]*queued{}, serving: map[int64]bool{}, wake: make(chan struct{}, 1)}
}

// add records a queued job; it reports whether the job is new.
func (d *demand) add(q queued) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.jobs[q.ID]; ok {
		return false
	}
	d.jobs[q.ID] = &q
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return true
}

// remove forgets a job (it started, finished or was cancelled).
func (d *demand) remove(id int64) (queued, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q, ok := d.jobs[id]
	delete(d.jobs, id)
	delete(d.serving, id)
	if !ok {
		return queued{}, false
	}
	return *q, true
}

// next takes the oldest job no runner is being made for, marking it.
func (d *demand) next() (queued, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var best *queued
	for id, q := range d.jobs {
		if d.serving[id] {
			continue
		}
		if best == nil || q.QueuedAt.Before(best.QueuedAt) || (q.QueuedAt.Equal(best.QueuedAt) && q.ID < best.ID) {
			best = q
		}
	}
	if best == nil {
		return queued{}, false
	}
	d.serving[best.ID] = true
	return *best, true
}

// release makes a job available to next again (its runner got no job).
func (d *demand) release(id int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.serving, id)
	if _, ok := d.jobs[id]; ok {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// len is the number of queued jobs.
func (d *demand) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.jobs)
}

// implicitLabels are the labels GitHub gives every self-hosted Linux x64
// runner besides the configured ones.
var implicitLabels = []string{"self-hosted", "linux", "x64"}

// matches reports whether a runner with the configured labels can take a
// job asking for want: every label the job names must be the runner's
// (case-insensitively, as GitHub compares them). A job naming no label is
// not ours: GitHub would not send it to a self-hosted runner.
func matches(runnerLabels, want []string) bool {
	if len(want) == 0 {
		return false
	}
	have := map[string]bool{}
	for _, l := range append(slices.Clone(implicitLabels), runnerLabels...) {
		have[strings.ToLower(l)] = true
	}
	for _, w := range want {
		if !have[strings.ToLower(w)] {
			return false
		}
	}
	return true
}

// repoAllowed reports whether repo matches one of the patterns (path.Match
// globs like "acme/*", compared case-insensitively); no pattern allows all.
func repoAllowed(patterns []string, repo string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(repo)); ok {
			return true
		}
	}
	return false
}

// fromFork reports whether a run was triggered by a pull request whose
// head lives in another repository (pull_request, pull_request_target,
// pull_request_review... from a fork).
func fromFork(r apiRun) bool {
	return strings.HasPrefix(r.Event, "pull_request") && r.HeadRepository.FullName != "" &&
		!strings.EqualFold(r.HeadRepository.FullName, r.Repository.FullName)
}

// Limits on webhook deliveries.
const (
	maxWebhookBody = 1 << 20 // workflow_job payloads are a few KiB
	seenDeliveries = 4096    // delivery ids remembered for de-duplication
)

// deliveries remembers recent delivery ids.
type deliveries struct {
	mu    sync.Mutex
	seen  map[string]bool
	order []string
}

// first reports whether id was not seen before, and remembers it.
func (d *deliveries) first(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	if d.seen[id] {
		return false
	}
	d.seen[id] = true
	d.order = append(d.order, id)
	if len(d.order) > seenDeliveries {
		delete(d.seen, d.order[0])
		d.order = d.order[1:]
	}
	return true
}

// validSignature checks X-Hub-Signature-256 ("sha256=" + hex HMAC-SHA256
// of the raw body) in constant time.
func validSignature(secret, body []byte, header string) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok || len(secret) == 0 {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}

// webhookEvent is the part of a workflow_job delivery the autoscaler reads.
type webhookEvent struct {
	Action      string `json:"action"`
	WorkflowJob apiJob `json:"workflow_job"`
	Repository  repoOf `json:"repository"`
}

// ServeHTTP receives GitHub webhook deliveries: workflow_job events add
// and remove queued jobs; other events are acknowledged and ignored.
// Forged (bad signature), oversized and repeated deliveries are refused or
// ignored, and reported as events.
func (a *Autoscaler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxWebhookBody+1))
	if err != nil {
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	delivery := req.Header.Get("X-GitHub-Delivery")
	if len(body) > maxWebhookBody {
		a.event(Event{Type: EventDeliveryRefused, Delivery: delivery, Reason: "body larger than 1 MiB"})
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	if !validSignature(a.cfg.WebhookSecret, body, req.Header.Get("X-Hub-Signature-256")) {
		a.event(Event{Type: EventDeliveryRefused, Delivery: delivery, Reason: "bad or missing X-Hub-Signature-256"})
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if delivery == "" || !a.seen.first(delivery) {
		a.event(Event{Type: EventDeliveryDuplicate, Delivery: delivery, Reason: "delivery seen before"})
		w.WriteHeader(http.StatusOK)
		return
	}
	if kind := req.Header.Get("X-GitHub-Event"); kind != "workflow_job" {
		w.WriteHeader(http.StatusNoContent) // ping and other events
		return
	}
	var ev webhookEvent
	if err := json.Unmarshal(body, &ev); err != nil || ev.WorkflowJob.ID == 0 {
		a.event(Event{Type: EventDeliveryRefused, Delivery: delivery, Reason: "unreadable workflow_job payload"})
		http.Error(w, "unreadable payload", http.StatusBadRequest)
		return
	}
	j := ev.WorkflowJob
	switch ev.Action {
	case "queued":
		a.offer(queued{ID: j.ID, RunID: j.RunID, Repo: ev.Repository.FullName, Name: j.Name, Labels: j.Labels, QueuedAt: a.now(), Via: "webhook"})
	case "in_progress", "completed":
		a.jobLeft(j.ID)
	}
	w.WriteHeader(http.StatusNoContent)
}
