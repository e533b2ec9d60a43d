package autoscale

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/job"
)

// JITFactory turns an encoded JIT config into a coordinator serving that
// one registration (runner/github's JIT runner), and rebuilds the lease of
// a job a crashed run journaled.
type JITFactory interface {
	NewJIT(encoded []byte) (job.Coordinator, error)
	Resume(record []byte) (job.Lease, error)
}

// Config configures an Autoscaler.
type Config struct {
	// Name identifies the autoscaler ("autoscale:NAME" in logs, metrics
	// and job ids).
	Name string
	// Scope is where runners are registered, API the REST base URL.
	Scope Scope
	API   string
	// Auth gives REST tokens (an App installation token source).
	Auth TokenSource
	// RunnerGroupID is the runner group of the JIT runners (1: Default).
	RunnerGroupID int64
	// Labels are the custom labels this host serves (self-hosted, linux
	// and x64 are implied).
	Labels []string
	// MaxRunners bounds the JIT runners (and so the jobs) at once.
	MaxRunners int
	// WebhookSecret verifies deliveries (X-Hub-Signature-256).
	WebhookSecret []byte
	// Repositories limits the repositories served (path.Match globs,
	// "acme/*"); polling asks these (the scope's repository when the
	// scope is one). Empty: every repository of the scope, and polling
	// only for a repository scope.
	Repositories []string
	// AllowForks lets jobs of pull requests from forks have a runner.
	AllowForks bool
	// PollInterval is how often queued runs are polled (default 30s).
	PollInterval time.Duration
	// IdleTimeout is how long a JIT runner may wait for a job before it
	// is deleted and its capacity reused (default 2m).
	IdleTimeout time.Duration
	// ReconcileInterval is how often this host's registrations are
	// checked against GitHub's list (default 1m).
	ReconcileInterval time.Duration
	// Host names this host in runner names: airlock-<host>-<id>.
	Host string
	// StateDir holds the registration journal.
	StateDir string
	// Factory starts JIT runners.
	Factory JITFactory
	// HTTPClient sends the REST requests (default: 30 s timeout).
	HTTPClient *http.Client
	// Events, if set, receives what the autoscaler decided (for the audit
	// trail and metrics). It must return quickly.
	Events func(Event)
	Logger hclog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

// EventType names what an Event reports.
type EventType string

// Events the autoscaler reports.
const (
	EventJobQueued         EventType = "job_queued"          // a matching job is waiting
	EventJobRefused        EventType = "job_refused"         // left queued: fork, repository not allowed
	EventJobStarted        EventType = "job_started"         // a JIT runner got a job
	EventRunnerCreated     EventType = "runner_created"      // generate-jitconfig succeeded
	EventRunnerDeleted     EventType = "runner_deleted"      // reconcile or idle timeout deleted one
	EventRunnerStuck       EventType = "runner_stuck"        // a runner got no job in time
	EventDeliveryRefused   EventType = "delivery_refused"    // forged, oversized or unreadable webhook
	EventDeliveryDuplicate EventType = "delivery_duplicate"  // a delivery id seen before
	EventProvisionFailed   EventType = "provisioning_failed" // generate-jitconfig or the JIT start failed
)

// Event is one decision of the autoscaler. It never holds a token or a
// JIT config.
type Event struct {
	Type     EventType
	Repo     string
	Job      int64 // GitHub's workflow job id
	Runner   string
	Delivery string
	Reason   string
	// Wait is how long the job was queued (job_started).
	Wait time.Duration
}

// Autoscaler is a job.Coordinator whose jobs come from JIT runners it
// creates for queued jobs (a job.Coordinator).
type Autoscaler struct {
	cfg     Config
	log     hclog.Logger
	rest    *rest
	demand  *demand
	seen    deliveries
	journal *journal
	runs    sync.Map // run id -> apiRun (trust decisions)

	mu     sync.Mutex
	active map[string]bool // runner names with a job or being made
}

var nameRE = regexp.MustCompile(`[^a-z0-9-]+`)

// New validates cfg and returns an Autoscaler. Start its background loops
// with Run.
func New(cfg Config) (*Autoscaler, error) {
	var errs []error
	if cfg.Name == "" {
		errs = append(errs, errors.New("name: required"))
	}
	if cfg.Scope.Org == "" && cfg.Scope.Repo == "" {
		errs = append(errs, errors.New("url: an organization or a repository is required"))
	}
	if cfg.Auth == nil {
		errs = append(errs, errors.New("credentials: a GitHub App secret or a token secret is required"))
	}
	if len(cfg.WebhookSecret) == 0 && cfg.Scope.Repo == "" && len(cfg.Repositories) == 0 {
		errs = append(errs, errors.New("webhook_secret: required when there is no repository to poll"))
	}
	if cfg.MaxRunners <= 0 {
		errs = append(errs, errors.New("max_runners: must be at least 1"))
	}
	if cfg.Factory == nil {
		errs = append(errs, errors.New("no JIT runner factory"))
	}
	if cfg.StateDir == "" {
		errs = append(errs, errors.New("state directory: required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("autoscale %q: %w", cfg.Name, err)
	}
	if cfg.RunnerGroupID == 0 {
		cfg.RunnerGroupID = 1
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = time.Minute
	}
	cfg.Host = strings.Trim(nameRE.ReplaceAllString(strings.ToLower(cfg.Host), "-"), "-")
	if cfg.Host == "" {
		cfg.Host = "host"
	}
	if len(cfg.Host) > 32 {
		cfg.Host = cfg.Host[:32]
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	jr, err := openJournal(cfg.StateDir, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("autoscale %q: %w", cfg.Name, err)
	}
	return &Autoscaler{
		cfg:     cfg,
		log:     cfg.Logger.Named("autoscale").With("autoscale", cfg.Name),
		rest:    &rest{base: strings.TrimRight(cfg.API, "/"), scope: cfg.Scope, auth: cfg.Auth, http: cfg.HTTPClient},
		demand:  newDemand(),
		journal: jr,
		active:  map[string]bool{},
	}, nil
}

// Name implements job.Coordinator.
func (a *Autoscaler) Name() string { return "autoscale:" + a.cfg.Name }

// Limit implements job.Coordinator: one job per JIT runner.
func (a *Autoscaler) Limit() int { return a.cfg.MaxRunners }

// Queued is the number of matching jobs waiting for a runner.
func (a *Autoscaler) Queued() int { return a.demand.len() }

func (a *Autoscaler) now() time.Time { return a.cfg.Now() }

func (a *Autoscaler) event(e Event) {
	lvl := hclog.Info
	switch e.Type {
	case EventDeliveryRefused, EventRunnerStuck, EventProvisionFailed:
		lvl = hclog.Warn
	case EventDeliveryDuplicate:
		lvl = hclog.Debug
	}
	a.log.Log(lvl, string(e.Type), "repo", e.Repo, "job", e.Job, "runner", e.Runner, "delivery", e.Delivery, "reason", e.Reason)
	if a.cfg.Events != nil {
		a.cfg.Events(e)
	}
}

// Run reconciles at once and then every ReconcileInterval, and polls for
// queued jobs every PollInterval, until ctx ends.
func (a *Autoscaler) Run(ctx context.Context) {
	a.reconcile(ctx)
	a.poll(ctx)
	rt := time.NewTicker(a.cfg.ReconcileInterval)
	defer rt.Stop()
	pt := time.NewTicker(a.cfg.PollInterval)
	defer pt.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rt.C:
			a.reconcile(ctx)
		case <-pt.C:
			a.poll(ctx)
		}
	}
}

// offer adds a queued job to the demand if this host serves it: its labels
// match, its repository is allowed, and it does not come from a fork
// (unless allowed). Jobs refused are left queued for other runners.
func (a *Autoscaler) offer(q queued) {
	if !a.cfg.Scope.Contains(q.Repo) || !matches(a.cfg.Labels, q.Labels) {
		return // not ours: another pool's job
	}
	if !repoAllowed(a.cfg.Repositories, q.Repo) {
		a.event(Event{Type: EventJobRefused, Repo: q.Repo, Job: q.ID, Reason: "repository is not in this autoscaler's repositories"})
		return
	}
	if !a.cfg.AllowForks {
		fork, err := a.isFork(q.Repo, q.RunID)
		if err != nil {
			// Unknown trust: do not provision. The next poll asks again.
			a.log.Warn("cannot tell whether a queued job comes from a fork; not provisioning it now", "repo", q.Repo, "job", q.ID, "error", err)
			return
		}
		if fork {
			a.event(Event{Type: EventJobRefused, Repo: q.Repo, Job: q.ID, Reason: "the run comes from a pull request of a fork (allow_forks = false)"})
			return
		}
	}
	if a.demand.add(q) {
		a.event(Event{Type: EventJobQueued, Repo: q.Repo, Job: q.ID, Reason: "via " + q.Via})
	}
}

// isFork reads (once per run) whether a run comes from a fork.
func (a *Autoscaler) isFork(repo string, runID int64) (bool, error) {
	if v, ok := a.runs.Load(runID); ok {
		return fromFork(v.(apiRun)), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := a.rest.run(ctx, repo, runID)
	if err != nil {
		return false, err
	}
	a.runs.Store(runID, r)
	return fromFork(r), nil
}

// jobLeft forgets a job that started or ended (on any runner).
func (a *Autoscaler) jobLeft(id int64) {
	a.demand.remove(id)
}

// pollRepos are the repositories polling asks.
func (a *Autoscaler) pollRepos() []string {
	if a.cfg.Scope.Repo != "" {
		return []string{a.cfg.Scope.Repo}
	}
	var out []string
	for _, r := range a.cfg.Repositories {
		if !strings.ContainsAny(r, "*?[") {
			out = append(out, r)
		}
	}
	return out
}

// poll finds queued jobs through the REST API: the fallback for lost
// webhooks.
func (a *Autoscaler) poll(ctx context.Context) {
	for _, repo := range a.pollRepos() {
		runs, err := a.rest.queuedRuns(ctx, repo)
		if err != nil {
			a.log.Warn("polling queued runs", "repo", repo, "error", err)
			continue
		}
		for _, run := range runs {
			a.runs.Store(run.ID, run)
			jobs, err := a.rest.runJobs(ctx, repo, run.ID)
			if err != nil {
				a.log.Warn("polling the jobs of a queued run", "repo", repo, "run", run.ID, "error", err)
				continue
			}
			for _, j := range jobs {
				if j.Status == "queued" {
					at := j.CreatedAt
					if at.IsZero() {
						at = a.now()
					}
					a.offer(queued{ID: j.ID, RunID: run.ID, Repo: repo, Name: j.Name, Labels: j.Labels, QueuedAt: at, Via: "poll"})
				}
			}
		}
	}
}

// acquireWait bounds one Acquire's wait for demand, like a long poll.
const acquireWait = 30 * time.Second

// Acquire implements job.Coordinator: it waits (bounded) for a queued
// job this host serves, registers a JIT runner for it, and returns the job
// that runner gets. A runner that gets none within IdleTimeout is deleted
// and the job offered again.
func (a *Autoscaler) Acquire(ctx context.Context) (job.Lease, error) {
	wait := time.NewTimer(acquireWait)
	defer wait.Stop()
	for {
		q, ok := a.demand.next()
		if ok {
			return a.provision(ctx, q)
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-wait.C:
			return nil, nil
		case <-a.demand.wake:
		}
	}
}

// provision registers a JIT runner for q and waits for its job.
func (a *Autoscaler) provision(ctx context.Context, q queued) (job.Lease, error) {
	name := a.runnerName()
	a.setActive(name, true)
	// Journaled before it exists: a crash in the middle of
	// generate-jitconfig leaves a name reconcile can find.
	if err := a.journal.put(registration{Name: name, Created: a.now(), Job: q.ID, Repo: q.Repo}); err != nil {
		a.setActive(name, false)
		a.demand.release(q.ID)
		return nil, fmt.Errorf("journaling runner %s: %w", name, err)
	}
	id, jit, err := a.rest.generateJIT(ctx, name, a.cfg.RunnerGroupID, a.cfg.Labels)
	if err != nil {
		a.forget(name)
		a.demand.release(q.ID)
		a.event(Event{Type: EventProvisionFailed, Repo: q.Repo, Job: q.ID, Runner: name, Reason: err.Error()})
		return nil, err
	}
	if err := a.journal.put(registration{Name: name, ID: id, Created: a.now(), Job: q.ID, Repo: q.Repo}); err != nil {
		a.log.Error("journaling the id of a new runner; reconcile deletes it by name", "runner", name, "error", err)
	}
	a.event(Event{Type: EventRunnerCreated, Repo: q.Repo, Job: q.ID, Runner: name})
	coord, err := a.cfg.Factory.NewJIT(jit)
	clear(jit)
	if err != nil {
		a.deleteRunner(ctx, name, id, "its JIT config could not be used")
		a.demand.release(q.ID)
		a.event(Event{Type: EventProvisionFailed, Repo: q.Repo, Job: q.ID, Runner: name, Reason: err.Error()})
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, a.cfg.IdleTimeout)
	defer cancel()
	for {
		lease, err := coord.Acquire(lctx)
		if lease != nil {
			// GitHub gives the job to any matching runner: this one may
			// have another queued job than q. Either way one job less
			// waits; the webhook's in_progress settles which.
			a.demand.remove(q.ID)
			a.event(Event{Type: EventJobStarted, Repo: q.Repo, Job: q.ID, Runner: name, Wait: a.now().Sub(q.QueuedAt)})
			return &scaledLease{Lease: lease, a: a, name: name, id: id}, nil
		}
		if lctx.Err() != nil || err != nil {
			reason := fmt.Sprintf("no job within %s", a.cfg.IdleTimeout)
			if err != nil {
				reason = err.Error()
			}
			if ctx.Err() != nil {
				reason = "the agent is stopping"
			}
			a.deleteRunner(context.WithoutCancel(ctx), name, id, reason)
			a.demand.release(q.ID)
			if ctx.Err() == nil {
				a.event(Event{Type: EventRunnerStuck, Repo: q.Repo, Job: q.ID, Runner: name, Reason: reason})
			}
			return nil, nil
		}
	}
}

// runnerName is a fresh name: airlock-<host>-<8 hex>.
func (a *Autoscaler) runnerName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return a.prefix() + hex.EncodeToString(b)
}

func (a *Autoscaler) prefix() string { return "airlock-" + a.cfg.Host + "-" }

func (a *Autoscaler) setActive(name string, on bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if on {
		a.active[name] = true
	} else {
		delete(a.active, name)
	}
}

func (a *Autoscaler) isActive(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.active[name]
}

// forget drops a runner from the journal and the active set.
func (a *Autoscaler) forget(name string) {
	if err := a.journal.remove(name); err != nil {
		a.log.Error("forgetting a runner in the journal; reconcile retries", "runner", name, "error", err)
	}
	a.setActive(name, false)
}

// deleteRunner deletes a registration at GitHub, then forgets it. When the
// delete fails the journal keeps it for reconcile.
func (a *Autoscaler) deleteRunner(ctx context.Context, name string, id int64, reason string) {
	if id != 0 {
		if err := a.rest.deleteRunner(ctx, id); err != nil {
			a.log.Error("deleting a runner; reconcile retries", "runner", name, "error", err)
			a.setActive(name, false)
			return
		}
	}
	a.forget(name)
	a.event(Event{Type: EventRunnerDeleted, Runner: name, Reason: reason})
}

// reconcile deletes this host's registrations that should not exist:
// offline, unknown to the journal, or idle past the timeout without a job
// of this process; and forgets journal entries GitHub no longer has.
// Runners whose names lack this host's prefix are never touched.
func (a *Autoscaler) reconcile(ctx context.Context) {
	list, err := a.rest.listRunners(ctx)
	if err != nil {
		a.log.Warn("reconciling runners: listing failed", "error", err)
		return
	}
	regs, err := a.journal.list()
	if err != nil {
		// Runners of unreadable entries count as unknown: deleted below.
		a.log.Error("reconciling runners: reading the journal", "error", err)
	}
	known := map[string]registration{}
	for _, r := range regs {
		known[r.Name] = r
	}
	onGitHub := map[string]bool{}
	for _, r := range list {
		if !strings.HasPrefix(r.Name, a.prefix()) {
			continue
		}
		onGitHub[r.Name] = true
		if a.isActive(r.Name) {
			continue
		}
		reg, inJournal := known[r.Name]
		var reason string
		switch {
		case !inJournal:
			reason = "unknown to this host's journal (left by a crash)"
		case r.Status == "offline":
			reason = "offline"
		case !r.Busy && a.now().Sub(reg.Created) > a.cfg.IdleTimeout:
			reason = "idle past the idle timeout"
		case r.Busy:
			reason = "busy with a job no process of this host runs (left by a crash)"
		default:
			continue
		}
		a.deleteRunner(ctx, r.Name, r.ID, reason)
	}
	for _, r := range regs {
		if !onGitHub[r.Name] && !a.isActive(r.Name) {
			a.forget(r.Name)
		}
	}
}

// scaledLease is a JIT runner's lease; Finish also ends the registration.
type scaledLease struct {
	job.Lease
	a    *Autoscaler
	name string
	id   int64
}

// leaseRecord is the journal record of an autoscaled job.
type leaseRecord struct {
	Runner string `json:"runner"`
	ID     int64  `json:"runner_id"`
	Inner  []byte `json:"inner"`
}

// Record wraps the JIT lease's record with the registration.
func (l *scaledLease) Record() []byte {
	b, _ := json.Marshal(leaseRecord{Runner: l.name, ID: l.id, Inner: l.Lease.Record()})
	return b
}

// Finish reports the job, then deletes the (ephemeral) registration, which
// GitHub may have removed already.
func (l *scaledLease) Finish(ctx context.Context, o job.Outcome, trail string) error {
	err := l.Lease.Finish(ctx, o, trail)
	l.a.deleteRunner(context.WithoutCancel(ctx), l.name, l.id, "its job ended")
	return err
}

// SetJournal forwards the JIT lease's journal updates, wrapped like
// Record (job.JournalUpdater).
func (l *scaledLease) SetJournal(update func(record []byte) error) {
	if ju, ok := l.Lease.(job.JournalUpdater); ok {
		ju.SetJournal(func(inner []byte) error {
			b, err := json.Marshal(leaseRecord{Runner: l.name, ID: l.id, Inner: inner})
			if err != nil {
				return err
			}
			return update(b)
		})
	}
}

// Summary words the job log's last line as the JIT lease does
// (job.Summarizer), or keeps the agent's.
func (l *scaledLease) Summary(o job.Outcome) string {
	if s, ok := l.Lease.(job.Summarizer); ok {
		return s.Summary(o)
	}
	return o.Summary
}

// StepDriver is the JIT lease's step driver (job.Driven): GitHub's step
// semantics, without which run: and uses: steps cannot run.
func (l *scaledLease) StepDriver() job.StepDriver {
	if d, ok := l.Lease.(job.Driven); ok {
		return d.StepDriver()
	}
	return nil
}

// Resume implements job.Coordinator for a job a crashed run left.
func (a *Autoscaler) Resume(record []byte) (job.Lease, error) {
	var r leaseRecord
	if err := json.Unmarshal(record, &r); err != nil || r.Runner == "" {
		return nil, fmt.Errorf("autoscale %q: unreadable job record", a.cfg.Name)
	}
	inner, err := a.cfg.Factory.Resume(r.Inner)
	if err != nil {
		return nil, err
	}
	a.setActive(r.Runner, true)
	return &scaledLease{Lease: inner, a: a, name: r.Runner, id: r.ID}, nil
}
