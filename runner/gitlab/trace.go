package gitlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	maxTraceChunk       = 1 << 20 // bytes per PATCH
	defaultTraceLimit   = 4 << 20 // gitlab-runner's output_limit default
	defaultTraceEvery   = 3 * time.Second
	defaultKeepAlive    = 30 * time.Second
	minServerInterval   = time.Second
	maxConsecutive416   = 8
	traceTruncateNotice = "\n[airlock] job log exceeded %d bytes; further output is not sent to GitLab\n"
)

// Job statuses GitLab reports in the Job-Status header.
const (
	JobStatusRunning   = "running"
	JobStatusCanceling = "canceling"
	JobStatusCanceled  = "canceled"
	JobStatusFailed    = "failed"
	JobStatusSuccess   = "success"
)

// TraceOptions configure a TraceWriter.
type TraceOptions struct {
	// Interval between trace sends; default 3s. GitLab may change it with
	// X-GitLab-Trace-Update-Interval (bounded to [1s, 15min]).
	Interval time.Duration
	// KeepAlive: when nothing was sent for this long, touch the job with
	// PUT state=running; default 30s.
	KeepAlive time.Duration
	// Limit on the bytes of log kept and sent (gitlab-runner's
	// output_limit); default 4 MiB. Output beyond it is dropped after a
	// one-line notice.
	Limit int64
	// FailureReasons the job accepts (JobResponse.Features.FailureReasons).
	FailureReasons []string
	// OnCancel is called once, in its own goroutine, when GitLab reports
	// Job-Status canceling: stop the script, run after_script, then Finish
	// as failed.
	OnCancel func()
	// OnAbort is called once, in its own goroutine, when GitLab reports
	// the job canceled or failed, or the job is gone (403/404): stop
	// everything now; Finish will then fail with ErrJobGone.
	OnAbort func(status string)
	Logger  hclog.Logger
}

// TraceWriter streams a job's log to GitLab (PATCH /jobs/:id/trace) and
// reports its final state. Write never blocks on the network: output is
// buffered and sent in chunks of at most 1 MiB by Start's goroutine, by
// Flush, and by Finish. Write, Flush and Checksum are safe for concurrent
// use; Finish is called once, last. Put it behind the masker: what is
// written here reaches GitLab as is.
type TraceWriter struct {
	c     *Client
	id    int64
	token string
	opts  TraceOptions
	log   hclog.Logger

	mu        sync.Mutex
	buf       []byte // everything written and kept, sent or not
	sent      int    // bytes GitLab holds: buf[:sent]
	truncated bool
	closed    bool
	tooLarge  bool
	gone      bool
	finishing bool
	interval  time.Duration
	lastSend  time.Time

	sendMu     sync.Mutex // one sender at a time
	cancelOnce sync.Once
	abortOnce  sync.Once
	stopOnce   sync.Once
	stop       chan struct{}
	done       chan struct{}
}

// NewTraceWriter returns the trace of job id, authenticated with its job
// token.
func (c *Client) NewTraceWriter(id int64, token string, o TraceOptions) *TraceWriter {
	if o.Interval <= 0 {
		o.Interval = defaultTraceEvery
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = defaultKeepAlive
	}
	if o.Limit <= 0 {
		o.Limit = defaultTraceLimit
	}
	log := o.Logger
	if log == nil {
		log = c.log
	}
	return &TraceWriter{
		c: c, id: id, token: token, opts: o,
		log:      log.With("job", id),
		interval: o.Interval,
		lastSend: time.Now(),
		stop:     make(chan struct{}),
	}
}

var errTraceClosed = errors.New("job trace already finished")

// Write buffers p for sending. It fails only after Finish.
func (t *TraceWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, errTraceClosed
	}
	if t.truncated {
		return len(p), nil
	}
	room := t.opts.Limit - int64(len(t.buf))
	if int64(len(p)) > room {
		t.buf = append(t.buf, p[:max(room, 0)]...)
		t.buf = append(t.buf, fmt.Sprintf(traceTruncateNotice, t.opts.Limit)...)
		t.truncated = true
		return len(p), nil
	}
	t.buf = append(t.buf, p...)
	return len(p), nil
}

// Checksum returns the CRC32 (IEEE) and size of exactly the bytes GitLab
// acknowledged holding.
func (t *TraceWriter) Checksum() (uint32, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return crc32.ChecksumIEEE(t.buf[:t.sent]), int64(t.sent)
}

// Start sends the trace every interval and touches the job when idle,
// until Finish or ctx ends. Call it at most once.
func (t *TraceWriter) Start(ctx context.Context) {
	t.done = make(chan struct{})
	go t.loop(ctx)
}

func (t *TraceWriter) loop(ctx context.Context) {
	defer close(t.done)
	for {
		t.mu.Lock()
		wait := t.interval
		t.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-t.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		err := t.Flush(ctx)
		switch {
		case errors.Is(err, ErrJobGone):
			return
		case errors.Is(err, ErrTraceTooLarge):
		case err != nil:
			t.log.Debug("sending job trace failed; will retry", "error", err)
		}
		t.mu.Lock()
		idle := time.Since(t.lastSend) >= t.opts.KeepAlive
		t.mu.Unlock()
		if idle {
			if err := t.touch(ctx); errors.Is(err, ErrJobGone) {
				return
			} else if err != nil {
				t.log.Debug("touching job failed; will retry", "error", err)
			}
		}
	}
}

func (t *TraceWriter) stopLoop() {
	t.stopOnce.Do(func() { close(t.stop) })
	if t.done != nil {
		<-t.done
	}
}

// Flush sends everything buffered. It returns ErrTraceTooLarge once GitLab
// refused more trace, an error wrapping ErrJobGone when the job is gone,
// and a retryable *APIError on transient failures.
func (t *TraceWriter) Flush(ctx context.Context) error {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	for n416 := 0; ; {
		t.mu.Lock()
		if t.gone {
			t.mu.Unlock()
			return fmt.Errorf("sending trace of job %d: %w", t.id, ErrJobGone)
		}
		if t.tooLarge {
			t.mu.Unlock()
			return ErrTraceTooLarge
		}
		start := t.sent
		end := min(len(t.buf), start+maxTraceChunk)
		chunk := t.buf[start:end] // never rewritten: Write only appends
		total := len(t.buf)
		t.mu.Unlock()
		if start >= total {
			return nil
		}
		got, err := t.patch(ctx, start, chunk, total)
		if err != nil {
			return err
		}
		if got < 0 { // 416 or no progress
			if n416++; n416 > maxConsecutive416 {
				return fmt.Errorf("sending trace of job %d: GitLab keeps refusing the range", t.id)
			}
		} else {
			n416 = 0
		}
	}
}

// patch sends one chunk at offset start. It returns the new acknowledged
// size, or -1 after a 416 or an answer without progress (the size was reset
// to what GitLab holds).
func (t *TraceWriter) patch(ctx context.Context, start int, chunk []byte, total int) (int, error) {
	op := fmt.Sprintf("sending trace of job %d", t.id)
	r, err := t.c.do(ctx, call{
		op: op, method: http.MethodPatch, url: t.c.endpoint(fmt.Sprintf("/jobs/%d/trace", t.id)),
		raw: bytes.NewReader(chunk), ctype: "text/plain", jobToken: t.token,
		header: map[string]string{"Content-Range": fmt.Sprintf("%d-%d", start, start+len(chunk)-1)},
	})
	if err != nil {
		return 0, err
	}
	t.observe(r)
	switch r.status {
	case http.StatusAccepted, http.StatusOK:
		n := start + len(chunk)
		if end, ok := rangeEnd(r.header.Get("Range")); ok {
			if end > total {
				return 0, fmt.Errorf("%s: GitLab claims %d bytes, only %d were written", op, end, total)
			}
			n = end
		}
		t.mu.Lock()
		t.sent = n
		t.lastSend = time.Now()
		t.mu.Unlock()
		if n <= start {
			return -1, nil // no progress: bounded like a 416
		}
		return n, nil
	case http.StatusRequestedRangeNotSatisfiable:
		end, ok := rangeEnd(r.header.Get("Range"))
		if !ok || end > total {
			return 0, &APIError{Op: op, Status: r.status, Err: errors.New("no usable Range header to resume from")}
		}
		t.log.Debug("resuming trace", "from", end)
		t.mu.Lock()
		t.sent = end
		t.mu.Unlock()
		return -1, nil
	case http.StatusForbidden:
		status := r.header.Get("Job-Status")
		if status == JobStatusRunning || status == JobStatusCanceling {
			t.mu.Lock()
			first := !t.tooLarge
			t.tooLarge = true
			t.mu.Unlock()
			if first {
				t.log.Warn("GitLab refused more job log (size limit); output is no longer sent")
			}
			return 0, ErrTraceTooLarge
		}
		t.jobGone(status)
		return 0, &APIError{Op: op, Status: r.status, Err: ErrJobGone}
	case http.StatusNotFound:
		t.jobGone("")
		return 0, &APIError{Op: op, Status: r.status, Err: ErrJobGone}
	}
	return 0, unexpected(op, r)
}

// observe handles Job-Status and X-GitLab-Trace-Update-Interval.
func (t *TraceWriter) observe(r *response) {
	if v := r.header.Get("X-GitLab-Trace-Update-Interval"); v != "" {
		if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && s > 0 {
			d := min(max(time.Duration(min(s, int64(maxServerWait/time.Second)))*time.Second, minServerInterval), maxServerWait)
			t.mu.Lock()
			t.interval = d
			t.mu.Unlock()
		}
	}
	t.mu.Lock()
	finishing := t.finishing
	t.mu.Unlock()
	if finishing {
		return // our own final update changes the status
	}
	switch status := r.header.Get("Job-Status"); status {
	case JobStatusCanceling:
		if t.opts.OnCancel != nil {
			t.cancelOnce.Do(func() {
				t.log.Info("GitLab is canceling the job")
				go t.opts.OnCancel()
			})
		}
	case JobStatusCanceled, JobStatusFailed, JobStatusSuccess:
		t.abort(status)
	}
}

func (t *TraceWriter) jobGone(status string) {
	t.mu.Lock()
	t.gone = true
	t.mu.Unlock()
	if status == "" {
		status = "gone"
	}
	t.abort(status)
}

func (t *TraceWriter) abort(status string) {
	t.abortOnce.Do(func() {
		t.log.Info("GitLab ended the job", "status", status)
		if t.opts.OnAbort != nil {
			go t.opts.OnAbort(status)
		}
	})
}

// rangeEnd parses GitLab's "0-N" Range header: N is the bytes it holds.
func rangeEnd(v string) (int, bool) {
	v = strings.TrimSpace(v)
	v = strings.TrimPrefix(v, "bytes=")
	a, b, ok := strings.Cut(v, "-")
	if !ok || a != "0" {
		return 0, false
	}
	n, err := strconv.Atoi(b)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
