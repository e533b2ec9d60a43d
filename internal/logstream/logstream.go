// Package logstream buffers a job's log and sends it to its coordinator
// in chunks, through a callback the coordinator supplies (buildkite's
// log_streamer idea): GitLab's PATCH /jobs/:id/trace is one Upload,
// GitHub's results upload another. The streamer owns the buffering, the
// output limit, the send interval and the keep-alive; the callback owns the
// protocol.
//
// Use:
//
//	s := logstream.New(upload, logstream.Options{Interval: 3 * time.Second})
//	s.Start(ctx)          // background sends every Interval
//	fmt.Fprintln(s, "…")  // Write never blocks on the network
//	err := s.Close(ctx)   // stop the loop, refuse writes, send the rest
//
// Write, Flush, Acked, SetInterval and Rewind are safe for concurrent use;
// uploads never overlap (one sender at a time).
package logstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
)

// Upload sends chunk, the bytes of the log from offset off on, and returns
// the offset the coordinator holds afterwards: normally off+len(chunk);
// less when it kept only part of it or wants to resume from an earlier
// offset (the streamer continues from what is returned). A returned offset
// not above off counts as no progress; after 8 in a row Flush fails.
//
// An error made with Permanent stops uploading for good (the job is gone,
// the coordinator refuses more log): every later Flush returns it until
// Rewind. Any other error is retried at the next interval (and by Flush).
type Upload func(ctx context.Context, off int64, chunk []byte) (int64, error)

// Options configure a Streamer. Zero values take the defaults.
type Options struct {
	// Limit bounds the bytes of log kept and sent (default 4 MiB). Output
	// beyond it is dropped after Notice.
	Limit int64
	// Notice is appended once when the limit is reached; a %d in it is
	// replaced by the limit. Default: "\n[airlock] job log exceeded %d
	// bytes; further output is not sent\n".
	Notice string
	// MaxChunk bounds the bytes of one Upload (default 1 MiB).
	MaxChunk int
	// Interval between background sends (default 3s); see SetInterval.
	Interval time.Duration
	// KeepAlive: when nothing was acknowledged for this long, OnIdle is
	// called (default 30s).
	KeepAlive time.Duration
	// OnIdle, if set, tells the coordinator the job is alive while its log
	// is quiet (GitLab: PUT state=running). A Permanent error stops the
	// background loop.
	OnIdle func(ctx context.Context) error
	// OnAck, if set, is called in the sender's goroutine whenever the
	// acknowledged offset changed, with the new offset (for example to
	// journal it so that a later run continues the log instead of
	// rewriting it).
	OnAck func(off int64)
	// Base is how many bytes of earlier log the coordinator holds already
	// (a job resumed after a crash): the first Upload starts at Base and
	// offsets count them. The streamer keeps only what is written to it.
	Base int64
	// AllowAhead accepts a coordinator that holds more than Base before
	// anything of this streamer's is acknowledged (a resumed log whose
	// record of Base lagged behind the last send before a crash): when an
	// Upload returns Ahead(n), the streamer continues at n.
	AllowAhead bool
	// Logger gets the background loop's transient failures (debug level).
	Logger hclog.Logger
}

// Default option values.
const (
	DefaultLimit     = 4 << 20
	DefaultMaxChunk  = 1 << 20
	DefaultInterval  = 3 * time.Second
	DefaultKeepAlive = 30 * time.Second
	defaultNotice    = "\n[airlock] job log exceeded %d bytes; further output is not sent\n"
	maxNoProgress    = 8
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("job log already closed")

// permanentError marks an Upload error that stops streaming.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err (from Upload or OnIdle) as final: the streamer stops
// uploading and Flush returns err from then on. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var pe *permanentError
	return errors.As(err, &pe)
}

// Streamer buffers a log and uploads it. Make one with New.
type Streamer struct {
	up   Upload
	opts Options
	log  hclog.Logger

	mu        sync.Mutex
	ahead     bool   // the coordinator held more than Base (AllowAhead)
	buf       []byte // everything written and kept, from offset Base
	acked     int64  // absolute offset the coordinator holds
	truncated bool
	closed    bool
	stopped   error // a Permanent upload error
	interval  time.Duration
	lastAck   time.Time

	sendMu   sync.Mutex // one sender at a time
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// New returns a streamer that sends through up.
func New(up Upload, o Options) *Streamer {
	if o.Limit <= 0 {
		o.Limit = DefaultLimit
	}
	if o.Notice == "" {
		o.Notice = defaultNotice
	}
	if o.MaxChunk <= 0 {
		o.MaxChunk = DefaultMaxChunk
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.Base < 0 {
		o.Base = 0
	}
	log := o.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Streamer{up: up, opts: o, log: log, acked: o.Base, interval: o.Interval,
		lastAck: time.Now(), stop: make(chan struct{})}
}

// Write buffers p for sending; it never blocks on the network. Output
// beyond Limit is dropped (after the notice) but still reported written.
// It fails only after Close.
func (s *Streamer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	if s.truncated {
		return len(p), nil
	}
	room := s.opts.Limit - int64(len(s.buf))
	if int64(len(p)) > room {
		cut := int(max(room, 0))
		for cut > 0 && !utf8.RuneStart(p[cut]) {
			cut-- // never inside a UTF-8 sequence
		}
		s.buf = append(s.buf, p[:cut]...)
		s.buf = append(s.buf, s.notice()...)
		s.truncated = true
		return len(p), nil
	}
	s.buf = append(s.buf, p...)
	return len(p), nil
}

func (s *Streamer) notice() string {
	n := s.opts.Notice
	for i := 0; i+1 < len(n); i++ {
		if n[i] == '%' && n[i+1] == 'd' {
			return n[:i] + fmt.Sprint(s.opts.Limit) + n[i+2:]
		}
	}
	return n
}

// Acked returns the offset the coordinator acknowledged holding, and the
// kept bytes before it that were written to this streamer (the log from
// Base to that offset). The slice must not be modified.
func (s *Streamer) Acked() (int64, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked, s.buf[:s.acked-s.opts.Base]
}

// Len returns the offset of the end of the log written so far.
func (s *Streamer) Len() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Base + int64(len(s.buf))
}

// SetInterval changes the background send interval (the coordinator may
// ask for another, e.g. GitLab's X-GitLab-Trace-Update-Interval).
func (s *Streamer) SetInterval(d time.Duration) {
	if d <= 0 {
		return
	}
	s.mu.Lock()
	s.interval = d
	s.mu.Unlock()
}

// Interval returns the current send interval.
func (s *Streamer) Interval() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.interval
}

// aheadError is Ahead's.
type aheadError struct{ n int64 }

func (e *aheadError) Error() string {
	return fmt.Sprintf("the coordinator holds %d bytes of log this streamer never had", e.n)
}

// Ahead is the error an Upload returns when the coordinator holds n bytes,
// more than the streamer's Base, of which it acknowledged none of this
// streamer's: with AllowAhead the streamer continues at n.
func Ahead(n int64) error { return &aheadError{n: n} }

func aheadOf(err error) (int64, bool) {
	var ae *aheadError
	if errors.As(err, &ae) {
		return ae.n, true
	}
	return 0, false
}

// Ahead reports whether the coordinator held bytes this streamer never
// had (AllowAhead): what precedes its buffer is then not its to vouch for.
func (s *Streamer) Ahead() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ahead
}

// Rewind makes the next upload start at off (clamped to [Base, end]):
// the coordinator holds less than it acknowledged (GitLab's 412 after a
// checksum mismatch). It clears a Permanent stop.
func (s *Streamer) Rewind(off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acked = min(max(off, s.opts.Base), s.opts.Base+int64(len(s.buf)))
	s.stopped = nil
}

// Start sends the log every interval, and calls OnIdle when nothing was
// acknowledged for KeepAlive, until Close or ctx ends. Call it at most
// once.
func (s *Streamer) Start(ctx context.Context) {
	s.done = make(chan struct{})
	go s.loop(ctx)
}

func (s *Streamer) loop(ctx context.Context) {
	defer close(s.done)
	for {
		timer := time.NewTimer(s.Interval())
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-s.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		// After a Permanent error nothing more is sent, but the job may
		// still need keep-alives (a coordinator refusing more log).
		if err := s.Flush(ctx); err != nil && !IsPermanent(err) {
			s.log.Debug("sending job log failed; will retry", "error", err)
		}
		s.mu.Lock()
		idle := time.Since(s.lastAck) >= s.opts.KeepAlive
		s.mu.Unlock()
		if idle && s.opts.OnIdle != nil {
			err := s.opts.OnIdle(ctx)
			if IsPermanent(err) {
				return
			}
			if err != nil {
				s.log.Debug("keep-alive failed; will retry", "error", err)
				continue
			}
			s.Touched()
		}
	}
}

// Touched resets the keep-alive clock: the coordinator heard from the job
// by other means.
func (s *Streamer) Touched() {
	s.mu.Lock()
	s.lastAck = time.Now()
	s.mu.Unlock()
}

// Flush sends everything buffered, in chunks of at most MaxChunk. It
// returns the Permanent error that stopped streaming, if any, or the first
// Upload error (the rest stays buffered).
func (s *Streamer) Flush(ctx context.Context) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for noProgress := 0; ; {
		s.mu.Lock()
		if s.stopped != nil {
			err := s.stopped
			s.mu.Unlock()
			return err
		}
		off := s.acked
		rel := off - s.opts.Base
		end := min(int64(len(s.buf)), rel+int64(s.opts.MaxChunk))
		chunk := s.buf[rel:end] // never rewritten: Write only appends
		total := s.opts.Base + int64(len(s.buf))
		s.mu.Unlock()
		if off >= total {
			return nil
		}
		got, err := s.up(ctx, off, chunk)
		if n, ok := aheadOf(err); ok && s.opts.AllowAhead {
			s.mu.Lock()
			rebase := s.acked == s.opts.Base && n > s.opts.Base
			if rebase {
				s.opts.Base, s.acked, s.ahead = n, n, true
			}
			s.mu.Unlock()
			if rebase {
				if s.opts.OnAck != nil {
					s.opts.OnAck(n)
				}
				continue
			}
		}
		if err != nil {
			if IsPermanent(err) {
				s.mu.Lock()
				s.stopped = err
				s.mu.Unlock()
			}
			return err
		}
		if got > off+int64(len(chunk)) || got < s.opts.Base {
			return fmt.Errorf("sending job log: the coordinator claims to hold %d bytes after %d-%d were sent", got, off, off+int64(len(chunk)))
		}
		s.mu.Lock()
		changed := got != s.acked
		s.acked = got
		if got > off {
			s.lastAck = time.Now()
		}
		s.mu.Unlock()
		if changed && s.opts.OnAck != nil {
			s.opts.OnAck(got)
		}
		if got > off {
			noProgress = 0
			continue
		}
		if noProgress++; noProgress >= maxNoProgress {
			return fmt.Errorf("sending job log: no progress after %d attempts at offset %d", noProgress, off)
		}
	}
}

// Close stops the background loop, refuses further writes and sends the
// rest of the log (Flush's error). Call it once, last; Rewind and Flush
// still work after it (a final report may need to resend).
func (s *Streamer) Close(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	if s.done != nil {
		<-s.done
	}
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return s.Flush(ctx)
}

// Stop stops the background loop and refuses further writes without
// sending anything.
func (s *Streamer) Stop() {
	s.stopOnce.Do(func() { close(s.stop) })
	if s.done != nil {
		<-s.done
	}
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}
