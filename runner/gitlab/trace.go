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

	"github.com/airlock-ci/airlock/internal/logstream"
)

const (
	maxTraceChunk     = 1 << 20 // bytes per PATCH
	defaultTraceLimit = 4 << 20 // gitlab-runner's output_limit default
	defaultTraceEvery = 3 * time.Second
	defaultKeepAlive  = 30 * time.Second
	minServerInterval = time.Second
	// traceTruncateNotice is gitlab-runner's, word for word.
	traceTruncateNotice = "\n\x1b[33;1mJob's log exceeded limit of %d bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n"
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
	// Resume continues a trace GitLab holds already (a job a crashed run
	// left): the writer appends at Resume.Size instead of rewriting the
	// log from offset 0.
	Resume TraceProgress
	// Resumed says the trace is a crashed run's: GitLab may hold more of it
	// than Resume says (a crash between a send and its journal record).
	// The writer then continues after GitLab's copy, and, not knowing
	// those bytes, reports the final state without a checksum.
	Resumed bool
	// OnProgress, if set, is called (in the sending goroutine) whenever
	// GitLab acknowledged more of the trace, so that it can be journaled
	// for Resume.
	OnProgress func(TraceProgress)
	Logger     hclog.Logger
}

// TraceProgress is how much of a job's trace GitLab acknowledged: its
// size and the CRC32 (IEEE) of those bytes.
type TraceProgress struct {
	Size int64  `json:"size,omitempty"`
	CRC  uint32 `json:"crc,omitempty"`
	// Unverified: GitLab's copy holds bytes this runner never had, so
	// CRC is not known.
	Unverified bool `json:"unverified,omitempty"`
}

// TraceWriter streams a job's log to GitLab (PATCH /jobs/:id/trace) and
// reports its final state. It is a logstream.Streamer whose upload is the
// PATCH: Write never blocks on the network; output is sent in chunks of at
// most 1 MiB by Start's goroutine, by Flush, and by Finish. Write, Flush
// and Checksum are safe for concurrent use; Finish is called once, last.
// Put it behind the masker: what is written here reaches GitLab as is.
type TraceWriter struct {
	c     *Client
	id    int64
	token string
	opts  TraceOptions
	log   hclog.Logger
	s     *logstream.Streamer

	mu        sync.Mutex
	gone      bool
	finishing bool
	probed    bool // a resumed trace's size was asked (see patch)

	cancelOnce sync.Once
	abortOnce  sync.Once
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
	t := &TraceWriter{c: c, id: id, token: token, opts: o, log: log.With("job", id)}
	t.s = logstream.New(t.patch, logstream.Options{
		Limit:      o.Limit,
		Notice:     traceTruncateNotice,
		MaxChunk:   maxTraceChunk,
		Interval:   o.Interval,
		KeepAlive:  o.KeepAlive,
		OnIdle:     t.idle,
		OnAck:      t.acked,
		Base:       o.Resume.Size,
		AllowAhead: o.Resumed,
		Logger:     t.log,
	})
	return t
}

// Write buffers p for sending. It fails only after Finish.
func (t *TraceWriter) Write(p []byte) (int, error) {
	n, err := t.s.Write(p)
	if errors.Is(err, logstream.ErrClosed) {
		return n, errTraceClosed
	}
	return n, err
}

var errTraceClosed = errors.New("job trace already finished")

// progress is what GitLab acknowledged holding: its size and the CRC32
// (IEEE) of exactly those bytes, unless they are not all this runner's.
func (t *TraceWriter) progress() TraceProgress {
	off, kept := t.s.Acked()
	if t.opts.Resume.Unverified || t.s.Ahead() {
		return TraceProgress{Size: off, Unverified: true}
	}
	return TraceProgress{Size: off, CRC: crc32.Update(t.opts.Resume.CRC, crc32.IEEETable, kept)}
}

func (t *TraceWriter) acked(int64) {
	if t.opts.OnProgress != nil {
		t.opts.OnProgress(t.progress())
	}
}

// Start sends the trace every interval and touches the job when idle,
// until Finish or ctx ends. Call it at most once.
func (t *TraceWriter) Start(ctx context.Context) { t.s.Start(ctx) }

// idle touches the job while its log is quiet.
func (t *TraceWriter) idle(ctx context.Context) error {
	t.mu.Lock()
	gone := t.gone
	t.mu.Unlock()
	if gone {
		return logstream.Permanent(ErrJobGone)
	}
	err := t.touch(ctx)
	if errors.Is(err, ErrJobGone) {
		return logstream.Permanent(err)
	}
	return err
}

// Flush sends everything buffered. It returns ErrTraceTooLarge once GitLab
// refused more trace, an error wrapping ErrJobGone when the job is gone,
// and a retryable *APIError on transient failures.
func (t *TraceWriter) Flush(ctx context.Context) error {
	err := t.s.Flush(ctx)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrTraceTooLarge):
		return ErrTraceTooLarge
	case errors.Is(err, ErrJobGone):
		return fmt.Errorf("sending trace of job %d: %w", t.id, err)
	}
	return err
}

// patch sends one chunk at offset start (the streamer's Upload) and
// returns the size GitLab holds afterwards: after a 416 it is the size
// GitLab says it holds, from which the streamer resends.
func (t *TraceWriter) patch(ctx context.Context, start int64, chunk []byte) (int64, error) {
	op := fmt.Sprintf("sending trace of job %d", t.id)
	t.mu.Lock()
	gone, probe := t.gone, t.opts.Resumed && !t.probed
	t.probed = true
	t.mu.Unlock()
	if gone {
		return 0, logstream.Permanent(&APIError{Op: op, Status: http.StatusNotFound, Err: ErrJobGone})
	}
	if probe {
		// Before a crashed run's trace is continued, GitLab says how much
		// it holds: an empty write past anything the journal can lag by
		// (one chunk) changes nothing and is answered 416 with the size.
		// Writing at a lagging offset would cut what the crashed run sent.
		n, err := t.patch(ctx, start+maxTraceChunk+1, nil)
		if err != nil {
			return 0, err
		}
		if n > start {
			return 0, logstream.Ahead(n)
		}
	}
	r, err := t.c.do(ctx, call{
		op: op, method: http.MethodPatch, url: t.c.endpoint(fmt.Sprintf("/jobs/%d/trace", t.id)),
		raw: bytes.NewReader(chunk), ctype: "text/plain", jobToken: t.token,
		header: map[string]string{"Content-Range": fmt.Sprintf("%d-%d", start, start+int64(len(chunk))-1)},
	})
	if err != nil {
		return 0, err
	}
	t.observe(r)
	switch r.status {
	case http.StatusAccepted, http.StatusOK:
		n := start + int64(len(chunk))
		if end, ok := rangeEnd(r.header.Get("Range")); ok {
			if int64(end) > n {
				return 0, fmt.Errorf("%s: GitLab claims %d bytes, only %d were written", op, end, n)
			}
			n = int64(end)
		}
		return n, nil
	case http.StatusRequestedRangeNotSatisfiable:
		end, ok := rangeEnd(r.header.Get("Range"))
		if ok && int64(end) > start+int64(len(chunk)) && t.opts.Resumed {
			return 0, logstream.Ahead(int64(end)) // a crashed run sent these after its last record
		}
		if !ok || int64(end) > start+int64(len(chunk)) {
			return 0, &APIError{Op: op, Status: r.status, Err: errors.New("no usable Range header to resume from")}
		}
		t.log.Debug("resuming trace", "from", end)
		return int64(end), nil
	case http.StatusForbidden:
		status := r.header.Get("Job-Status")
		if status == JobStatusRunning || status == JobStatusCanceling {
			t.log.Warn("GitLab refused more job log (size limit); output is no longer sent")
			return 0, logstream.Permanent(ErrTraceTooLarge)
		}
		t.jobGone(status)
		return 0, logstream.Permanent(&APIError{Op: op, Status: r.status, Err: ErrJobGone})
	case http.StatusNotFound:
		t.jobGone("")
		return 0, logstream.Permanent(&APIError{Op: op, Status: r.status, Err: ErrJobGone})
	}
	return 0, unexpected(op, r)
}

// observe handles Job-Status and X-GitLab-Trace-Update-Interval.
func (t *TraceWriter) observe(r *response) {
	if v := r.header.Get("X-GitLab-Trace-Update-Interval"); v != "" {
		if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && s > 0 {
			t.s.SetInterval(min(max(time.Duration(min(s, int64(maxServerWait/time.Second)))*time.Second, minServerInterval), maxServerWait))
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
