package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/atomicfile"
	"github.com/airlock-ci/airlock/internal/backoff"
)

// Batch is a run of consecutive records of one job's trail.
type Batch struct {
	Job      string
	FirstSeq int64
	LastSeq  int64
	Lines    [][]byte // raw records, without newlines, in seq order
	Sealed   bool     // the last line is the seal
}

// Sink receives trail records from the Shipper.
//
// Contract: Deliver is called from a single goroutine per sink, never
// concurrently with itself. Batches of one job arrive in seq order, each
// starting right after the last one Deliver accepted (returned nil for).
// Delivery is at least once: after a failure or a runner restart the same
// records may come again, so Deliver should be idempotent per (job, seq)
// where it can. An error makes the Shipper retry the same records later
// with exponential back-off; an error implementing RetryAfter() sets the
// delay instead. Deliver must honour ctx.
type Sink interface {
	Name() string
	Deliver(ctx context.Context, b Batch) error
}

// Finisher is an optional Sink capability: Done is called once a job's
// whole trail, seal included, has been delivered (for example to close a
// per-job upload). An error is retried like a failed Deliver.
type Finisher interface {
	Done(ctx context.Context, job string) error
}

// ShipperOptions tune a Shipper; zero values take the defaults.
type ShipperOptions struct {
	Interval   time.Duration // poll period while jobs run (default 100ms)
	MinBackoff time.Duration // first retry delay of a failing sink (default 200ms)
	MaxBackoff time.Duration // retry delay cap (default 30s)
	MaxBatch   int           // records per batch (default 500)
	KeepSpool  bool          // keep delivered sealed spool files (default: remove)
	Logger     hclog.Logger
}

// Shipper drains spool files to sinks. Each sink has its own goroutine and
// its own position per job (an fsynced offset file under
// <spool>/offsets/<sink>/<job>), so a slow or failing sink delays nobody
// else and a restart resumes where each sink stopped. Once every sink has
// delivered a sealed trail (and Done succeeded) the spool file is removed.
type Shipper struct {
	dir   string
	sinks []Sink
	opts  ShipperOptions
	log   hclog.Logger
	kicks []chan struct{}

	mu sync.Mutex // serializes the cleanup of finished spool files
}

// NewShipper returns a shipper for the spool directory; start it with Run.
// Sink names must be distinct file-name-safe ids.
func NewShipper(spoolDir string, sinks []Sink, opts ShipperOptions) *Shipper {
	if opts.Interval <= 0 {
		opts.Interval = 100 * time.Millisecond
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 500
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &Shipper{dir: spoolDir, sinks: sinks, opts: opts, log: log.Named("audit-shipper")}
	for range sinks {
		s.kicks = append(s.kicks, make(chan struct{}, 1))
	}
	return s
}

// Kick wakes every sink loop now (pass it to WithDurable). Never blocks.
func (s *Shipper) Kick(string) {
	for _, k := range s.kicks {
		select {
		case k <- struct{}{}:
		default:
		}
	}
}

// Run ships until ctx is cancelled, then makes one last pass bounded by
// a 5 s grace. It returns nil after a cancel.
func (s *Shipper) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i, sk := range s.sinks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx, sk, s.kicks[i])
		}()
	}
	wg.Wait()
	final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.Drain(final); err != nil {
		s.log.Warn("final audit delivery incomplete", "error", err)
	}
	return nil
}

// Drain makes one pass: every sink gets every durable record of every
// spool file. It returns the joined delivery errors. Use it instead of Run
// (tests, one-shot commands), never while Run is running: a sink's
// deliveries must not overlap.
func (s *Shipper) Drain(ctx context.Context) error {
	var errs []error
	for _, sk := range s.sinks {
		if err := s.pass(ctx, sk); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Shipper) loop(ctx context.Context, sk Sink, kick <-chan struct{}) {
	tick := time.NewTicker(s.opts.Interval)
	defer tick.Stop()
	var failures int
	wait := time.Duration(0)
	for {
		if wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
		} else {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			case <-kick:
			}
		}
		err := s.pass(ctx, sk)
		if err == nil || ctx.Err() != nil {
			failures, wait = 0, 0
			continue
		}
		failures++
		wait = s.backoff(failures, err)
		s.log.Warn("audit sink delivery failed", "sink", sk.Name(), "attempt", failures, "retry_in", wait, "error", err)
	}
}

// backoff returns the delay after the n-th consecutive failure: the
// error's Retry-After if it has one (capped at MaxBackoff), else
// backoff.Delay.
func (s *Shipper) backoff(n int, err error) time.Duration {
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) && ra.RetryAfter() > 0 {
		return min(ra.RetryAfter(), s.opts.MaxBackoff)
	}
	return backoff.Delay(s.opts.MinBackoff, s.opts.MaxBackoff, n-1)
}

// pass delivers what is new in every spool file to one sink.
func (s *Shipper) pass(ctx context.Context, sk Sink) error {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing audit spool: %w", err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, SpoolExt) {
			continue
		}
		job := strings.TrimSuffix(name, SpoolExt)
		if err := s.ship(ctx, sk, job); err != nil {
			errs = append(errs, fmt.Errorf("delivering audit trail of job %s to %s: %w", job, sk.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// position is a sink's progress in one spool file.
type position struct {
	Offset int64 // bytes delivered
	Seq    int64 // last seq delivered
	Sealed bool  // the seal was delivered
	Done   bool  // ... and Finisher.Done succeeded
}

func (s *Shipper) posPath(sink, job string) string {
	return filepath.Join(s.dir, "offsets", sink, job)
}

func (s *Shipper) readPos(sink, job string) (position, error) {
	b, err := os.ReadFile(s.posPath(sink, job))
	if errors.Is(err, os.ErrNotExist) {
		return position{}, nil
	}
	if err != nil {
		return position{}, err
	}
	var p position
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return position{}, fmt.Errorf("malformed offset file %s", s.posPath(sink, job))
	}
	p.Offset, err = strconv.ParseInt(f[0], 10, 64)
	if err == nil {
		p.Seq, err = strconv.ParseInt(f[1], 10, 64)
	}
	if err != nil {
		return position{}, fmt.Errorf("malformed offset file %s", s.posPath(sink, job))
	}
	if len(f) > 2 {
		p.Sealed = f[2] == "sealed" || f[2] == "done"
		p.Done = f[2] == "done"
	}
	return p, nil
}

// writePos replaces the offset file atomically and durably.
func (s *Shipper) writePos(sink, job string, p position) error {
	path := s.posPath(sink, job)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	text := fmt.Sprintf("%d %d", p.Offset, p.Seq)
	switch {
	case p.Done:
		text += " done"
	case p.Sealed:
		text += " sealed"
	}
	return atomicfile.WriteFile(path, []byte(text+"\n"), 0o600)
}

// lockShip takes the cross-process lock of one sink's position in one
// job's trail, so that of several processes sharing a state directory
// (two `airlock exec`, or exec beside run) only one at a time reads,
// delivers and records that position. It returns nil, nil when another
// holder has it: that one ships the records. The lock file is re-checked
// after locking, because unlockShip may remove it.
func (s *Shipper) lockShip(sink, job string) (*os.File, error) {
	path := filepath.Join(s.dir, "offsets", sink, job+".lock")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		held, err1 := f.Stat()
		named, err2 := os.Stat(path)
		if err1 == nil && err2 == nil && os.SameFile(held, named) {
			return f, nil
		}
		f.Close() // removed or replaced meanwhile: lock the current one
	}
}

// unlockShip releases a lock of lockShip, removing its file first when the
// job is finished for the sink (still holding it, so nobody else holds a
// lock on the removed file unknowingly).
func unlockShip(f *os.File, remove bool) {
	if remove {
		_ = os.Remove(f.Name())
	}
	_ = f.Close()
}

func (s *Shipper) ship(ctx context.Context, sk Sink, job string) error {
	lock, err := s.lockShip(sk.Name(), job)
	if err != nil || lock == nil {
		return err
	}
	finished := false
	defer func() { unlockShip(lock, finished) }()
	pos, err := s.readPos(sk.Name(), job)
	if err != nil {
		return err
	}
	if pos.Done {
		finished = true
		return s.cleanup(job)
	}
	path := SpoolPath(s.dir, job)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		finished = pos == (position{})
		return nil // removed by another sink's cleanup
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return err
	} else if st.Size() <= pos.Offset && !pos.Sealed {
		return nil // nothing new: no fsync, no read
	}
	size, err := durableSize(path, f)
	if err != nil {
		return err
	}
	for pos.Offset < size && !pos.Sealed {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf := make([]byte, min(size-pos.Offset, 2*MaxRecordBytes))
		n, err := f.ReadAt(buf, pos.Offset)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		chunk := lastLine(buf[:n])
		if len(chunk) == 0 {
			break // a torn or partial line; wait for more (or for Open to cut it)
		}
		b, used, err := makeBatch(job, chunk, s.opts.MaxBatch)
		if err != nil {
			return err
		}
		if err := sk.Deliver(ctx, b); err != nil {
			return err
		}
		pos.Offset += int64(used)
		pos.Seq = b.LastSeq
		pos.Sealed = b.Sealed
		if err := s.writePos(sk.Name(), job, pos); err != nil {
			return fmt.Errorf("recording position: %w", err)
		}
		if pos.Sealed {
			break
		}
	}
	if !pos.Sealed {
		return nil
	}
	if fin, ok := sk.(Finisher); ok {
		if err := fin.Done(ctx, job); err != nil {
			return fmt.Errorf("finishing: %w", err)
		}
	}
	pos.Done = true
	if err := s.writePos(sk.Name(), job, pos); err != nil {
		return fmt.Errorf("recording position: %w", err)
	}
	finished = true
	return s.cleanup(job)
}

// makeBatch takes up to max lines from chunk (complete lines only).
func makeBatch(job string, chunk []byte, max int) (Batch, int, error) {
	b := Batch{Job: job}
	used := 0
	for len(chunk) > 0 && len(b.Lines) < max {
		i := bytes.IndexByte(chunk, '\n')
		line := chunk[:i]
		var head struct {
			Seq  int64     `json:"seq"`
			Type EventType `json:"type"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			return Batch{}, 0, fmt.Errorf("reading spool record after seq %d: %w", b.LastSeq, err)
		}
		if len(b.Lines) == 0 {
			b.FirstSeq = head.Seq
		}
		b.LastSeq = head.Seq
		b.Lines = append(b.Lines, line)
		used += i + 1
		chunk = chunk[i+1:]
		if head.Type == Seal {
			b.Sealed = true
			break
		}
	}
	return b, used, nil
}

// cleanup removes a sealed spool file once every sink is done with it.
func (s *Shipper) cleanup(job string) error {
	if s.opts.KeepSpool {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sk := range s.sinks {
		p, err := s.readPos(sk.Name(), job)
		if err != nil || !p.Done {
			return err
		}
	}
	var errs []error
	if err := os.Remove(SpoolPath(s.dir, job)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, sk := range s.sinks {
		if err := os.Remove(s.posPath(sk.Name(), job)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing delivered spool of job %s: %w", job, err)
	}
	return nil
}
