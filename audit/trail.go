package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// Errors Open and Append return; test with errors.Is.
var (
	// ErrLocked: the spool file is held by a live Trail (this or another process).
	ErrLocked = errors.New("audit trail is open elsewhere")
	// ErrSealed: the trail already ends with a seal record.
	ErrSealed = errors.New("audit trail is sealed")
	// ErrOtherRunner: the spool file belongs to another runner id.
	ErrOtherRunner = errors.New("audit trail belongs to another runner")
	// ErrClosed: Append or Seal after Close or Seal.
	ErrClosed = errors.New("audit trail is closed")
)

// MaxRecordBytes bounds one record's encoded size; Append refuses larger ones.
const MaxRecordBytes = 1 << 20

// SpoolExt is the extension of spool and copy files.
const SpoolExt = ".jsonl"

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// ValidID reports whether s can be a runner or job id in a trail: it names
// a file and appears in the checkpoint origin.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// SpoolPath returns the spool file of job in spoolDir.
func SpoolPath(spoolDir, job string) string { return filepath.Join(spoolDir, job+SpoolExt) }

// Option configures a Trail.
type Option func(*trailOptions)

type trailOptions struct {
	mask    func(string) string
	now     func() time.Time
	durable func(job string)
}

// WithMask installs the secret guard: every string in every record's fields
// (keys and values, nested too) passes through mask before it is hashed and
// written; a record in which mask changed anything carries "redacted": true.
// Pass the runner's masker (MaskString), which replaces registered secret
// values and their encodings.
func WithMask(mask func(string) string) Option {
	return func(o *trailOptions) { o.mask = mask }
}

// WithClock sets the clock (tests).
func WithClock(now func() time.Time) Option {
	return func(o *trailOptions) { o.now = now }
}

// WithDurable registers a callback invoked (without locks held) each time
// appended records become durable; pass (*Shipper).Kick so sinks see new
// records at once instead of at the next poll.
func WithDurable(f func(job string)) Option {
	return func(o *trailOptions) { o.durable = f }
}

// Trail is one job's audit trail, open for appending. Its methods are safe
// for concurrent use; concurrent Appends share fsyncs (group commit). While
// a Trail is open its spool file is flock'ed, so Recover leaves it alone.
type Trail struct {
	path   string
	runner string
	job    string
	key    *Key
	opts   trailOptions

	mu        sync.Mutex
	cond      *sync.Cond
	f         *os.File
	seq       int64
	prev      string
	tree      tree
	written   int64 // bytes written to f
	synced    int64 // bytes known durable
	syncing   bool
	err       error // sticky: a failed write or fsync breaks the trail
	closed    bool
	truncated int64
}

// Open opens (creating) the spool file of jobID in spoolDir and locks it.
// An existing unsealed file is continued: its chain is read back and a
// torn last line left by a crash is cut off (the count is reported by
// TruncatedBytes, the runner_crashed record Recover writes, and the seal).
func Open(spoolDir, runnerID, jobID string, key *Key, opts ...Option) (*Trail, error) {
	if !ValidID(runnerID) {
		return nil, fmt.Errorf("opening audit trail: invalid runner id %q", runnerID)
	}
	if !ValidID(jobID) {
		return nil, fmt.Errorf("opening audit trail: invalid job id %q", jobID)
	}
	if key == nil {
		return nil, errors.New("opening audit trail: no signing key")
	}
	t := &Trail{path: SpoolPath(spoolDir, jobID), runner: runnerID, job: jobID, key: key}
	t.opts.now = time.Now
	for _, o := range opts {
		o(&t.opts)
	}
	t.cond = sync.NewCond(&t.mu)
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating audit spool %s: %w", spoolDir, err)
	}
	f, err := createLocked(t.path)
	if err != nil {
		return nil, fmt.Errorf("opening audit spool for job %s: %w", jobID, err)
	}
	if f == nil {
		// The trail exists: continue it, if no live process holds it.
		if f, err = os.OpenFile(t.path, os.O_RDWR|os.O_APPEND, 0o600); err != nil {
			return nil, fmt.Errorf("opening audit spool for job %s: %w", jobID, err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("opening audit trail of job %s: %w", jobID, ErrLocked)
			}
			return nil, fmt.Errorf("locking audit spool of job %s: %w", jobID, err)
		}
	}
	t.f = f
	if err := t.load(); err != nil {
		return nil, errors.Join(err, t.release())
	}
	if err := syncDir(spoolDir); err != nil {
		return nil, errors.Join(err, t.release())
	}
	registerLive(t)
	return t, nil
}

// newMarker is in the temporary name of a spool file being created:
// "<job>.jsonl.new-<pid>-<n>".
const newMarker = ".new-"

// createLocked creates the spool file at path already locked: it is made
// under a temporary name, locked, then linked into place, so that Recover
// (in this or another process) never finds it unlocked and seals a live
// job's trail as crashed. It returns nil, nil when path exists already.
func createLocked(path string) (*os.File, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, nil
	}
	tmp := fmt.Sprintf("%s%s%d-%d", path, newMarker, os.Getpid(), time.Now().UnixNano())
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp)
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	if err := os.Link(tmp, path); err != nil {
		f.Close()
		if errors.Is(err, fs.ErrExist) {
			return nil, nil // created meanwhile by another process
		}
		return nil, err
	}
	return f, nil
}

// load reads back an existing spool file.
func (t *Trail) load() error {
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("reading audit spool of job %s: %w", t.job, err)
	}
	br := bufio.NewReaderSize(t.f, 64<<10)
	var off int64
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			rec, perr := ParseRecord(line[:len(line)-1])
			if perr != nil {
				return fmt.Errorf("reading audit spool of job %s at byte %d: %w", t.job, off, perr)
			}
			if rec.Runner != t.runner {
				return fmt.Errorf("opening audit trail of job %s (runner %q): %w", t.job, rec.Runner, ErrOtherRunner)
			}
			if rec.Type == Seal {
				return fmt.Errorf("opening audit trail of job %s: %w", t.job, ErrSealed)
			}
			if rec.Seq != t.seq+1 || rec.Prev != t.prev {
				return fmt.Errorf("reading audit spool of job %s: record %d does not continue the chain", t.job, rec.Seq)
			}
			if err := t.tree.add(rec.Hash); err != nil {
				return err
			}
			t.seq, t.prev = rec.Seq, rec.Hash
			off += int64(len(line))
			continue
		}
		if err == io.EOF {
			if len(line) > 0 { // torn last line: cut it off
				t.truncated = int64(len(line))
				if err := t.f.Truncate(off); err != nil {
					return fmt.Errorf("cutting torn record off audit spool of job %s: %w", t.job, err)
				}
				if err := t.f.Sync(); err != nil {
					return fmt.Errorf("syncing audit spool of job %s: %w", t.job, err)
				}
			}
			break
		}
		if err != nil {
			return fmt.Errorf("reading audit spool of job %s: %w", t.job, err)
		}
	}
	t.written, t.synced = off, off
	return nil
}

// Job returns the trail's job id.
func (t *Trail) Job() string { return t.job }

// Path returns the spool file.
func (t *Trail) Path() string { return t.path }

// TruncatedBytes returns how many bytes of a torn last line Open cut off.
func (t *Trail) TruncatedBytes() int64 { return t.truncated }

// Synced returns how many bytes of the spool file are durable.
func (t *Trail) Synced() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.synced
}

// Log appends an event built by one of the New* constructors.
func (t *Trail) Log(ctx context.Context, ev Event) (Record, error) {
	return t.Append(ctx, ev.Type, ev.Fields)
}

// LogBatch appends events in order with one write and one fsync (group
// commit for a producer that has many records at once, such as the
// gateway's per-job event queue) and returns once all are durable. A
// record that cannot be encoded fails the whole batch before anything is
// written.
func (t *Trail) LogBatch(ctx context.Context, evs []Event) ([]Record, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	norms := make([]Fields, len(evs))
	for i, ev := range evs {
		if ev.Type == Seal {
			return nil, errors.New("appending audit record: seal records are written by Seal")
		}
		norm, err := t.prepare(ctx, ev.Type, ev.Fields)
		if err != nil {
			return nil, err
		}
		norms[i] = norm
	}
	t.mu.Lock()
	if err := t.usable(evs[0].Type); err != nil {
		t.mu.Unlock()
		return nil, err
	}
	recs := make([]Record, len(evs))
	var buf []byte
	seq, prev := t.seq, t.prev
	for i, ev := range evs {
		rec := Record{
			Seq: seq + 1, Time: t.opts.now().UTC(), Runner: t.runner, Job: t.job,
			Type: ev.Type, Fields: norms[i], Prev: prev,
		}
		if err := rec.finish(); err != nil {
			t.mu.Unlock()
			return nil, err
		}
		if len(rec.raw) > MaxRecordBytes {
			t.mu.Unlock()
			return nil, fmt.Errorf("appending %s to audit trail of job %s: record of %d bytes exceeds %d", ev.Type, t.job, len(rec.raw), MaxRecordBytes)
		}
		buf = append(append(buf, rec.raw...), '\n')
		recs[i] = rec
		seq, prev = rec.Seq, rec.Hash
	}
	n, err := t.f.Write(buf)
	t.written += int64(n)
	if err != nil {
		t.err = fmt.Errorf("writing audit spool: %w", err)
		t.mu.Unlock()
		return nil, t.err
	}
	for _, rec := range recs {
		if err := t.tree.add(rec.Hash); err != nil {
			t.err = err
			t.mu.Unlock()
			return nil, err
		}
	}
	t.seq, t.prev = seq, prev
	err = t.waitDurable(t.written)
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("appending %d records to audit trail of job %s: %w", len(evs), t.job, err)
	}
	if t.opts.durable != nil {
		t.opts.durable(t.job)
	}
	return recs, nil
}

// Append adds a record and returns once it is durable (fsynced). Field
// keys may not be envelope keys (seq, time, runner, job, type, prev, hash);
// the seal is written by Seal only.
func (t *Trail) Append(ctx context.Context, typ EventType, fields Fields) (Record, error) {
	if typ == Seal {
		return Record{}, errors.New("appending audit record: seal records are written by Seal")
	}
	return t.append(ctx, typ, fields, false)
}

// prepare checks and masks one record's fields (no lock held).
func (t *Trail) prepare(ctx context.Context, typ EventType, fields Fields) (Fields, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("appending %s to audit trail of job %s: %w", typ, t.job, err)
	}
	if typ == "" {
		return nil, errors.New("appending audit record: empty type")
	}
	for k := range fields {
		if reservedKeys[k] {
			return nil, fmt.Errorf("appending %s to audit trail of job %s: field %q is reserved", typ, t.job, k)
		}
	}
	norm, err := normalize(t.maskFields(fields))
	if err != nil {
		return nil, fmt.Errorf("appending %s to audit trail of job %s: %w", typ, t.job, err)
	}
	return norm, nil
}

// usable reports why nothing may be appended (t.mu held).
func (t *Trail) usable(typ EventType) error {
	if t.closed {
		return fmt.Errorf("appending %s to audit trail of job %s: %w", typ, t.job, ErrClosed)
	}
	if t.err != nil {
		return fmt.Errorf("appending %s to audit trail of job %s: %w", typ, t.job, t.err)
	}
	return nil
}

func (t *Trail) append(ctx context.Context, typ EventType, fields Fields, closing bool) (Record, error) {
	norm, err := t.prepare(ctx, typ, fields)
	if err != nil {
		return Record{}, err
	}

	t.mu.Lock()
	if err := t.usable(typ); err != nil {
		t.mu.Unlock()
		return Record{}, err
	}
	if closing {
		norm, err = t.sealFields(norm)
		if err != nil {
			t.mu.Unlock()
			return Record{}, err
		}
	}
	rec := Record{
		Seq: t.seq + 1, Time: t.opts.now().UTC(), Runner: t.runner, Job: t.job,
		Type: typ, Fields: norm, Prev: t.prev,
	}
	if err := rec.finish(); err != nil {
		t.mu.Unlock()
		return Record{}, err
	}
	if len(rec.raw) > MaxRecordBytes {
		t.mu.Unlock()
		return Record{}, fmt.Errorf("appending %s to audit trail of job %s: record of %d bytes exceeds %d", typ, t.job, len(rec.raw), MaxRecordBytes)
	}
	line := append(append(make([]byte, 0, len(rec.raw)+1), rec.raw...), '\n')
	n, err := t.f.Write(line)
	t.written += int64(n)
	if err != nil {
		t.err = fmt.Errorf("writing audit spool: %w", err)
		t.mu.Unlock()
		return Record{}, t.err
	}
	if !closing {
		if err := t.tree.add(rec.Hash); err != nil {
			t.err = err
			t.mu.Unlock()
			return Record{}, err
		}
	}
	t.seq, t.prev = rec.Seq, rec.Hash
	if closing {
		t.closed = true
	}
	err = t.waitDurable(t.written)
	t.mu.Unlock()
	if err != nil {
		return Record{}, fmt.Errorf("appending %s to audit trail of job %s: %w", typ, t.job, err)
	}
	if t.opts.durable != nil {
		t.opts.durable(t.job)
	}
	return rec, nil
}

// waitDurable blocks (t.mu held) until the first end bytes are fsynced.
// One caller at a time runs fsync for everything written so far; the
// others wait for it and usually find their bytes covered (group commit).
func (t *Trail) waitDurable(end int64) error {
	for t.synced < end {
		if t.err != nil {
			return t.err
		}
		if t.syncing {
			t.cond.Wait()
			continue
		}
		t.syncing = true
		target := t.written
		t.mu.Unlock()
		err := t.f.Sync()
		t.mu.Lock()
		t.syncing = false
		if err != nil {
			t.err = fmt.Errorf("syncing audit spool: %w", err)
		} else if target > t.synced {
			t.synced = target
		}
		t.cond.Broadcast()
	}
	return nil
}

// sealFields adds the counts, hashes and signed checkpoint (t.mu held).
func (t *Trail) sealFields(f Fields) (Fields, error) {
	root, err := t.tree.root()
	if err != nil {
		return nil, fmt.Errorf("sealing audit trail of job %s: %w", t.job, err)
	}
	c := checkpoint{
		Origin: origin(t.runner, t.job), Size: t.seq, Root: root,
		FinalHash: t.prev, Truncated: t.truncated, Reason: oneLine(stringOf(f[FieldReason])),
	}
	signed, err := t.key.signCheckpoint(c)
	if err != nil {
		return nil, fmt.Errorf("sealing audit trail of job %s: %w", t.job, err)
	}
	f[FieldReason] = c.Reason
	f[FieldCount] = c.Size
	f[FieldFinalHash] = c.FinalHash
	f[FieldTreeHash] = root.String()
	f[FieldTruncatedBytes] = c.Truncated
	f[FieldCheckpoint] = signed
	f[FieldKey] = t.key.VerifierKey()
	return normalize(f)
}

func stringOf(v any) string {
	s, _ := v.(string)
	return s
}

// Seal appends the signed seal record, makes it durable and closes the
// trail. reason says why ("finished", "runner_crashed", ...).
func (t *Trail) Seal(ctx context.Context, reason string) (Record, error) {
	rec, err := t.append(ctx, Seal, Fields{FieldReason: reason}, true)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return Record{}, err
		}
		return Record{}, errors.Join(err, t.release())
	}
	return rec, t.release()
}

// Close closes the trail without sealing it (a later Open continues it,
// Recover seals it). Close after Seal is a no-op.
func (t *Trail) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return t.release()
}

func (t *Trail) release() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.f == nil {
		return nil
	}
	unregisterLive(t)
	err := t.f.Close() // closing drops the flock
	t.f = nil
	if err != nil {
		return fmt.Errorf("closing audit spool of job %s: %w", t.job, err)
	}
	return nil
}

// maskFields returns a copy of fields with every string value passed
// through the mask hook; "redacted": true is added when anything changed.
func (t *Trail) maskFields(fields Fields) Fields {
	if t.opts.mask == nil {
		return fields
	}
	changed := false
	var walk func(v any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case string:
			m := t.opts.mask(x)
			if m != x {
				changed = true
			}
			return m
		case map[string]any:
			// Keys are field names of the schema, not data: masking one
			// (a value that happens to start like "secret...") would lose
			// the field or let two collide.
			out := make(map[string]any, len(x))
			for k, e := range x {
				out[k] = walk(e)
			}
			return out
		case Fields:
			return walk(map[string]any(x))
		case []any:
			out := make([]any, len(x))
			for i, e := range x {
				out[i] = walk(e)
			}
			return out
		case []string:
			out := make([]any, len(x))
			for i, e := range x {
				out[i] = walk(e)
			}
			return out
		case error:
			return walk(x.Error())
		case fmt.Stringer:
			return walk(x.String())
		default:
			return v
		}
	}
	out := walk(map[string]any(fields)).(map[string]any)
	if changed {
		out[FieldRedacted] = true
	}
	return Fields(out)
}

// Live trails of this process, so the shipper reads only durable bytes.
var live struct {
	sync.Mutex
	m map[string]*Trail
}

func registerLive(t *Trail) {
	live.Lock()
	defer live.Unlock()
	if live.m == nil {
		live.m = map[string]*Trail{}
	}
	live.m[t.path] = t
}

func unregisterLive(t *Trail) {
	live.Lock()
	defer live.Unlock()
	if live.m[t.path] == t {
		delete(live.m, t.path)
	}
}

// durableSize returns how many bytes of the spool file at path may be
// shipped: a live trail's synced offset, or else (a file no Trail of this
// process has open) its size after an fsync, so nothing reaches a sink
// before it is on disk.
func durableSize(path string, f *os.File) (int64, error) {
	live.Lock()
	t := live.m[path]
	live.Unlock()
	if t != nil {
		return t.Synced(), nil
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// lastLine returns the prefix of b up to and including its last newline.
func lastLine(b []byte) []byte {
	i := bytes.LastIndexByte(b, '\n')
	return b[:i+1]
}
