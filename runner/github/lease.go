package github

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/job"
)

// ErrLockLost is the cause a job is aborted with when its lock could not
// be renewed before it lapsed.
var ErrLockLost = errors.New("the job's lock on GitHub lapsed (renewals failed); GitHub abandons the job")

// lease is one acquired GitHub job (job.Lease).
type lease struct {
	c    *Coordinator
	info *jobInfo
	raw  []byte
	jc   *jobClient
	log  hclog.Logger

	lockedUntil time.Time
	resumed     bool
	orphan      bool // resumed for another (gone) coordinator: not this one's job

	jobOnce sync.Once
	j       *job.Job
	driver  job.StepDriver
	jobErr  error

	logs    *logSplitter
	uploads chan func(context.Context)
	upDone  chan struct{}
	upOnce  sync.Once
	upMu    sync.Mutex
	upShut  bool

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	started atomic.Bool
	feed    *feed
	curStep string // id of the running step, for the live console

	mu        sync.Mutex
	order     int // results change_order
	steps     []stepState
	cancelled bool
	lockLost  bool
}

// stepState is what the results service knows of one step.
type stepState struct {
	id, name   string
	started    time.Time
	done       time.Time
	logLines   int
	conclusion int // results conclusion once known (0: not yet)
}

func (c *Coordinator) newLease(info *jobInfo, raw []byte) *lease {
	l := &lease{c: c, info: info, raw: raw, jc: &jobClient{info: info, hc: c.hc},
		log:  c.log.With("job", info.JobID),
		stop: make(chan struct{}), uploads: make(chan func(context.Context), 64), upDone: make(chan struct{})}
	l.logs = &logSplitter{emit: l.stepBoundary, line: l.liveLine}
	return l
}

// firstRenew renews the lock before anything runs: up to five tries (§4).
func (l *lease) firstRenew(ctx context.Context) (time.Time, error) {
	var err error
	for try := 1; try <= firstRenewTries; try++ {
		var until time.Time
		if until, err = l.jc.renew(ctx); err == nil {
			return until, nil
		}
		if st := StatusOf(err); st == http.StatusNotFound || st == http.StatusUnauthorized {
			return time.Time{}, err
		}
		if try < firstRenewTries && !sleepFor(ctx, l.c.cfg.FirstRenewWait) {
			return time.Time{}, errors.Join(err, ctx.Err())
		}
	}
	return time.Time{}, err
}

// Job converts the job message (once).
func (l *lease) Job() (*job.Job, error) {
	l.jobOnce.Do(func() {
		name := l.c.cfg.Name
		if n, ok := strings.CutPrefix(l.info.Coordinator, "github:"); ok && l.resumed {
			name = n
		}
		id := jobID("github-"+name, l.info.JobID)
		if l.resumed {
			l.j = &job.Job{ID: id, Source: job.SourceGitHub, Name: l.info.Name}
			return
		}
		conv, err := l.c.cfg.Convert(l.raw)
		if err == nil && (conv == nil || conv.Job == nil) {
			err = errors.New("the converter returned no job")
		}
		if err != nil {
			l.jobErr = fmt.Errorf("converting GitHub job %q: %w", l.info.Name, err)
			return
		}
		j := conv.Job
		l.driver = conv.Driver
		j.ID, j.Source, j.CoordinatorID = id, job.SourceGitHub, l.info.JobID
		j.Instance = instanceOf(l.c.reg.GitHubURL)
		if j.Name == "" {
			j.Name = l.info.Name
		}
		l.j = j
		l.mu.Lock()
		l.steps = l.stepStates(j)
		l.mu.Unlock()
	})
	return l.j, l.jobErr
}

// stepStates maps the job's steps to the message's step ids: by name
// when a message step has it, else by position; runner-made steps (an
// action's post step) get a fresh id.
func (l *lease) stepStates(j *job.Job) []stepState {
	byName := map[string]string{}
	for i, n := range l.info.StepNames {
		if _, dup := byName[n]; !dup && i < len(l.info.StepIDs) {
			byName[n] = l.info.StepIDs[i]
		}
	}
	used := map[string]bool{}
	out := make([]stepState, len(j.Steps))
	for i, s := range j.Steps {
		id := s.Ref
		if id == "" || used[id] {
			id = byName[s.Name]
		}
		if id == "" || used[id] {
			id = ""
			if i < len(l.info.StepIDs) && !used[l.info.StepIDs[i]] {
				id = l.info.StepIDs[i]
			}
		}
		if id == "" {
			id = newGUID()
		}
		used[id] = true
		out[i] = stepState{id: id, name: s.Name}
	}
	return out
}

func newGUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// StepDriver is the job's GitHub step semantics (job.Driven), nil when the
// conversion gave none.
func (l *lease) StepDriver() job.StepDriver { return l.driver }

// Record is the journal record: ids, URLs and the job token, so that a
// restarted agent can report the job.
func (l *lease) Record() []byte {
	b, _ := json.Marshal(l.info)
	return b
}

// Mask lists the job token, GITHUB_TOKEN and every secret variable.
func (l *lease) Mask() []string { return append([]string(nil), l.info.Secrets...) }

// Workspace is nil: on GitHub the workflow checks out its sources itself.
func (l *lease) Workspace() func(ctx context.Context, dir string, out io.Writer) error { return nil }

// Log receives the masked job output, cut into step logs.
func (l *lease) Log() io.Writer { return l.logs }

// Start renews the lock every RenewInterval, polls with status Busy for
// the job's cancellation and uploads step logs as steps finish.
func (l *lease) Start(ctx context.Context, cancel func(), abort func(cause error)) {
	l.started.Store(true)
	l.startUploader(ctx)
	if l.resumed {
		return
	}
	if l.info.FeedURL != "" {
		l.mu.Lock()
		l.feed = newFeed(context.WithoutCancel(ctx), l.info.FeedURL, l.info.Token)
		l.mu.Unlock()
	}
	l.wg.Add(2)
	go l.renewLoop(ctx, abort)
	go l.watch(ctx, cancel, abort)
	l.enqueue(func(ctx context.Context) { l.sendSteps(ctx) })
}

func (l *lease) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *lease) renewLoop(ctx context.Context, abort func(error)) {
	defer l.wg.Done()
	wait := l.c.cfg.RenewInterval
	for {
		select {
		case <-l.stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		until, err := l.jc.renew(ctx)
		if err == nil {
			l.mu.Lock()
			l.lockedUntil = until
			l.mu.Unlock()
			wait = l.c.cfg.RenewInterval
			continue
		}
		if l.stopped() || ctx.Err() != nil {
			return
		}
		if StatusOf(err) == http.StatusNotFound {
			l.log.Error("GitHub no longer knows the job; aborting it", "error", err)
			abort(fmt.Errorf("renewing the job lock: %w: %w", job.ErrJobGone, err))
			return
		}
		l.mu.Lock()
		deadline := l.lockedUntil.Add(l.c.cfg.LockGrace)
		l.mu.Unlock()
		if time.Now().After(deadline) {
			l.mu.Lock()
			l.lockLost = true
			l.mu.Unlock()
			l.log.Error("job lock lapsed; aborting the job", "error", err)
			abort(ErrLockLost)
			return
		}
		l.log.Warn("renewing the job lock failed; retrying", "error", err)
		wait = jitter(l.c.cfg.ErrorWait / 3)
	}
}

// watch keeps polling (status Busy) while the job runs, for its
// JobCancellation.
func (l *lease) watch(ctx context.Context, cancel func(), abort func(error)) {
	defer l.wg.Done()
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-l.stop:
			stop()
		case <-pctx.Done():
		}
	}()
	errs := 0
	for !l.stopped() && pctx.Err() == nil {
		s, err := l.c.session(pctx)
		var m *message
		if err == nil {
			m, err = s.poll(pctx, statusBusy)
			if err != nil {
				err = l.c.pollError(s, err)
			}
		}
		if l.stopped() || pctx.Err() != nil {
			return
		}
		if err != nil {
			if errors.Is(err, job.ErrCoordinatorGone) {
				abort(err)
				return
			}
			errs++
			w := l.c.cfg.ErrorWait
			if errs > 5 {
				w *= 2
			}
			l.log.Warn("polling for cancellation failed; backing off", "error", err)
			if !sleepFor(pctx, jitter(w)) {
				return
			}
			continue
		}
		errs = 0
		if m == nil {
			continue
		}
		switch m.MessageType {
		case msgJobCancellation:
			var jc jobCancellation
			if decodeJSON(m.Body, &jc) == nil && (jc.JobID == l.info.JobID || jc.JobID == "") {
				l.log.Info("GitHub cancelled the job")
				l.mu.Lock()
				l.cancelled = true
				l.mu.Unlock()
				cancel()
			}
		case msgForceTokenRefresh:
			l.c.ts.Invalidate("")
		case msgRunnerJobRequest:
			l.log.Warn("a job request arrived while this runner is busy; not taken (GitHub re-queues it)")
		}
	}
}

// enqueue hands f to the uploader, which runs uploads in order; after
// Finish closed the queue it is dropped.
func (l *lease) enqueue(f func(context.Context)) {
	l.upMu.Lock()
	defer l.upMu.Unlock()
	if l.upShut {
		return
	}
	select {
	case l.uploads <- f:
	case <-l.upDone:
	}
}

func (l *lease) startUploader(ctx context.Context) {
	l.upOnce.Do(func() {
		ctx := context.WithoutCancel(ctx)
		go func() {
			defer close(l.upDone)
			for f := range l.uploads {
				f(ctx)
			}
		}()
	})
}

// stepBoundary is the log splitter's callback: a part of the log ended
// (a step's, or the set-up before the first) and step next begins.
func (l *lease) stepBoundary(done stepLog, next string) {
	now := time.Now()
	l.mu.Lock()
	var doneID string
	for i := range l.steps {
		st := &l.steps[i]
		if done.name != "" && st.name == done.name && !st.started.IsZero() && st.done.IsZero() {
			st.done, st.logLines, doneID = now, lineCount(done.data), st.id
		}
	}
	found := next == ""
	for i := range l.steps {
		st := &l.steps[i]
		if next != "" && st.name == next && st.started.IsZero() {
			st.started, found = now, true
			break
		}
	}
	if !found {
		// A step the runner added (an action's post step).
		l.steps = append(l.steps, stepState{id: newGUID(), name: next, started: now})
	}
	l.curStep = ""
	for i := range l.steps {
		if next != "" && l.steps[i].name == next && l.steps[i].started == now {
			l.curStep = l.steps[i].id
		}
	}
	l.mu.Unlock()
	if doneID != "" && len(done.data) > 0 {
		data := done.data
		l.enqueue(func(ctx context.Context) {
			if err := l.jc.uploadLog(ctx, doneID, data); err != nil {
				l.log.Warn("uploading a step log failed", "step", done.name, "error", err)
			}
		})
	}
	if r, ok := l.driver.(reporter); ok && doneID != "" {
		// The driver recorded the step's conclusion before the runner
		// wrote the next header; read it off the log path.
		l.enqueue(func(context.Context) {
			for _, sr := range r.Report().Steps {
				if sr.Ref == doneID {
					l.mu.Lock()
					for i := range l.steps {
						if l.steps[i].id == doneID {
							l.steps[i].conclusion = resultsConclusion(wireConclusion(sr.Conclusion))
						}
					}
					l.mu.Unlock()
				}
			}
		})
	}
	if next != "" {
		l.enqueue(func(ctx context.Context) { l.sendSteps(ctx) })
	}
}

// liveLine sends a (masked) line of the running step to the live console.
func (l *lease) liveLine(line []byte) {
	l.mu.Lock()
	f, id := l.feed, l.curStep
	l.mu.Unlock()
	if f != nil && id != "" {
		f.add(id, feedLine(line))
	}
}

// sendSteps sends the state of every step.
func (l *lease) sendSteps(ctx context.Context) {
	l.mu.Lock()
	l.order++
	order := l.order
	ups := make([]stepUpdate, len(l.steps))
	for i, st := range l.steps {
		u := stepUpdate{ExternalID: st.id, Number: i + 1, Name: st.name, Status: stepPending}
		if !st.started.IsZero() {
			u.Status, u.StartedAt = stepInProgress, resultsTime(st.started)
		}
		if st.conclusion != 0 && !st.done.IsZero() {
			u.Status, u.CompletedAt, u.Conclusion = stepCompleted, resultsTime(st.done), st.conclusion
		}
		ups[i] = u
	}
	l.mu.Unlock()
	if len(ups) == 0 {
		return
	}
	if err := l.jc.updateSteps(ctx, order, ups); err != nil {
		l.log.Warn("updating step states failed", "error", err)
	}
}

// Finish stops the renewals, uploads the logs, the final step states and
// the audit trail, and completes the job.
func (l *lease) Finish(ctx context.Context, o job.Outcome, trail string) error {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	if !l.orphan {
		defer l.c.released(l)
	}
	l.startUploader(ctx)
	l.mu.Lock()
	f := l.feed
	l.mu.Unlock()
	if !l.started.Load() && o.Err != nil {
		// Refused before it started: the job log says why.
		fmt.Fprintf(l.logs, "Error: %s\n", maskValues(o.Err.Error(), l.info.Secrets))
	}
	full := l.logs.finish()
	if f != nil {
		f.stop()
	}
	done := make(chan struct{})
	l.enqueue(func(context.Context) { close(done) })
	l.upMu.Lock()
	first := !l.upShut
	if first {
		l.upShut = true
		close(l.uploads)
	}
	l.upMu.Unlock()
	if first { // a second Finish (a retried report) has nothing queued
		select {
		case <-done:
		case <-ctx.Done():
		}
		<-l.upDone
	}

	var errs []error
	if len(full) > 0 {
		if err := l.jc.uploadLog(ctx, "", full); err != nil {
			errs = append(errs, fmt.Errorf("uploading job log: %w", err))
		}
	}
	req := l.completion(o)
	if r, ok := l.driver.(reporter); ok {
		for _, sum := range r.Report().Summaries {
			if err := l.jc.uploadSummary(ctx, sum.StepRef, []byte(sum.Markdown)); err != nil {
				errs = append(errs, fmt.Errorf("uploading the summary of step %s: %w", sum.StepRef, err))
			}
		}
	}
	if len(req.StepResults) > 0 {
		ups := make([]stepUpdate, len(req.StepResults))
		for i, sr := range req.StepResults {
			ups[i] = stepUpdate{ExternalID: sr.ExternalID, Number: sr.Number, Name: sr.Name, Status: stepCompleted,
				StartedAt: sr.StartedAt, CompletedAt: sr.CompletedAt, Conclusion: resultsConclusion(sr.Conclusion)}
		}
		l.mu.Lock()
		l.order++
		order := l.order
		l.mu.Unlock()
		if err := l.jc.updateSteps(ctx, order, ups); err != nil {
			errs = append(errs, fmt.Errorf("updating step states: %w", err))
		}
	}
	if trail != "" {
		if data, err := os.ReadFile(trail); err != nil {
			errs = append(errs, fmt.Errorf("reading audit trail: %w", err))
		} else if err := l.jc.uploadDiag(ctx, data); err != nil {
			errs = append(errs, fmt.Errorf("uploading audit trail: %w", err))
		}
	}
	if err := l.jc.complete(ctx, req, 5*time.Second); err != nil {
		if st := StatusOf(err); st == http.StatusNotFound || st == http.StatusUnauthorized {
			return fmt.Errorf("completing GitHub job: %w: %w", job.ErrJobGone, err)
		}
		return errors.Join(append(errs, err)...)
	}
	if len(errs) > 0 {
		// The job is complete on GitHub: nothing to retry at the next
		// start, but the admin must know.
		l.log.Warn("the job completed but parts of its report failed", "error", errors.Join(errs...))
	}
	l.log.Info("job completed on GitHub", "conclusion", req.Conclusion)
	return nil
}

func resultsConclusion(c string) int {
	switch c {
	case "succeeded":
		return conclSuccess
	case "skipped":
		return conclSkipped
	case "canceled", "cancelled":
		return conclCancelled
	}
	return conclFailure
}

// completion builds the completejob request from the outcome and, when
// the job ran with a Driver, its report.
func (l *lease) completion(o job.Outcome) completeRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	req := completeRequest{Outputs: map[string]wireOutput{}, Annotations: []wireAnnotation{}}
	switch {
	case l.lockLost:
		req.Conclusion = conclusionAbandoned
	case o.State == job.Success:
		req.Conclusion = conclusionSucceeded
	case o.State == job.Canceled || l.cancelled:
		req.Conclusion = conclusionCanceled
	default:
		req.Conclusion = conclusionFailed
	}
	var rep *Report
	if r, ok := l.driver.(reporter); ok {
		x := r.Report()
		rep = &x
		for k, v := range x.Outputs {
			req.Outputs[k] = wireOutput{Value: v}
		}
	}
	number := map[string]int{}
	for i, st := range l.steps {
		number[st.id] = i + 1
	}
	if rep != nil {
		for _, a := range rep.Annotations {
			req.Annotations = append(req.Annotations, wireAnnotation{Level: annotationLevel(a.Level), Message: a.Message, Title: a.Title,
				Path: a.File, StartLine: a.Line, EndLine: a.EndLine, StartColumn: a.Col, EndColumn: a.EndColumn, StepNumber: number[a.StepRef]})
		}
	}
	now := resultsTime(time.Now())
	results := map[string]job.StepResult{}
	for _, r := range o.Steps {
		results[r.Name] = r
	}
	reports := map[string]StepReport{}
	if rep != nil {
		for _, sr := range rep.Steps {
			reports[sr.Ref] = sr
		}
	}
	for i, st := range l.steps {
		sr := stepResult{ExternalID: st.id, Number: i + 1, Name: st.name, Status: "completed", Annotations: []wireAnnotation{}}
		if r, ok := reports[st.id]; ok {
			sr.Conclusion = wireConclusion(r.Conclusion)
			if !r.Started.IsZero() {
				sr.StartedAt = resultsTime(r.Started)
			}
			if !r.Finished.IsZero() {
				sr.CompletedAt = resultsTime(r.Finished)
			}
		} else {
			r, ran := results[st.name]
			switch {
			case !ran || r.Skipped:
				sr.Conclusion = "skipped"
			case r.ExitCode == 0 && r.Err == nil:
				sr.Conclusion = "succeeded"
			case o.State == job.Canceled && r.ExitCode == -1:
				sr.Conclusion = "canceled"
			default:
				sr.Conclusion = "failed"
			}
		}
		if sr.StartedAt == "" && !st.started.IsZero() {
			sr.StartedAt = resultsTime(st.started)
		}
		if sr.StartedAt != "" && sr.CompletedAt == "" {
			sr.CompletedAt = now
			if !st.done.IsZero() {
				sr.CompletedAt = resultsTime(st.done)
			}
		}
		for _, a := range req.Annotations {
			if a.StepNumber == i+1 {
				sr.Annotations = append(sr.Annotations, a)
			}
		}
		sr.LogLines = st.logLines
		req.StepResults = append(req.StepResults, sr)
	}
	return req
}

// wireConclusion maps a step report's conclusion (success, failure,
// cancelled, skipped) to completejob's vocabulary.
func wireConclusion(c string) string {
	switch c {
	case "success":
		return "succeeded"
	case "cancelled", "canceled":
		return "canceled"
	case "skipped":
		return "skipped"
	}
	return "failed"
}

func annotationLevel(l string) string {
	switch strings.ToLower(l) {
	case "warning":
		return "WARNING"
	case "notice":
		return "NOTICE"
	}
	return "FAILURE"
}

// ResumesFor says that any GitHub runner can report a job another one
// journaled (job.OrphanResumer): the record's job token is all it takes,
// and a JIT runner's coordinator does not outlive a crash.
func (c *Coordinator) ResumesFor(name string) bool { return strings.HasPrefix(name, "github:") }

// Resume rebuilds the lease of a job a crashed agent journaled, to report
// it failed.
func (c *Coordinator) Resume(record []byte) (job.Lease, error) {
	var info jobInfo
	if err := json.Unmarshal(record, &info); err != nil {
		return nil, fmt.Errorf("resuming GitHub job: %w", err)
	}
	if info.JobID == "" || info.Token == "" || info.RunServiceURL == "" {
		return nil, errors.New("resuming GitHub job: the record lacks the job id, token or run service URL")
	}
	info.Secrets = []string{info.Token}
	if n, ok := strings.CutPrefix(info.Coordinator, "github:"); ok && c.cfg.Name == "resumed" {
		c.cfg.Name = n
	}
	l := c.newLease(&info, nil)
	l.resumed = true
	l.orphan = info.Coordinator != "" && info.Coordinator != c.Name()
	if !l.orphan {
		c.mu.Lock()
		c.busy = l
		c.mu.Unlock()
	}
	return l, nil
}

// maskValues replaces every value in s by ***.
func maskValues(s string, values []string) string {
	for _, v := range values {
		if len(v) >= 4 {
			s = strings.ReplaceAll(s, v, "***")
		}
	}
	return s
}

// instanceOf is the GitHub instance of a runner's URL, scheme and host
// ("https://github.com"): what a grant's instance names.
func instanceOf(ghURL string) string {
	u, err := url.Parse(ghURL)
	if err != nil || u.Host == "" {
		return ""
	}
	return u.Scheme + "://" + strings.ToLower(u.Host)
}
