package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DirSink keeps a verbatim copy of every trail in Dir/<job>.jsonl. It is
// idempotent and safe across processes: each Deliver locks the copy
// (flock), reads its last record back, cuts a torn last line off, skips
// records the copy already holds (after checking that they are the same
// records) and appends the rest. It refuses to append to a sealed copy or
// to one that holds a different trail under the same job id
// (ErrCopyConflict), so one trail's records never land in another's.
type DirSink struct {
	Dir string
}

// ErrCopyConflict: a directory copy is sealed, or holds other records,
// where a batch would append.
var ErrCopyConflict = errors.New("audit copy conflicts with the delivered trail")

// NewDirSink returns a directory sink writing into dir.
func NewDirSink(dir string) *DirSink { return &DirSink{Dir: dir} }

// Name implements Sink.
func (d *DirSink) Name() string { return "dir" }

// Deliver implements Sink.
func (d *DirSink) Deliver(ctx context.Context, b Batch) error {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("creating audit directory: %w", err)
	}
	path := filepath.Join(d.Dir, b.Job+SpoolExt)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening audit copy: %w", err)
	}
	defer f.Close()
	if err := flockCtx(ctx, f); err != nil {
		return fmt.Errorf("locking audit copy %s: %w", path, err)
	}
	last, err := tidyCopy(f)
	if err != nil {
		return fmt.Errorf("reading audit copy %s: %w", path, err)
	}
	if err := syncDir(d.Dir); err != nil { // the copy's directory entry
		return err
	}
	if len(b.Lines) == 0 {
		return nil
	}
	if b.FirstSeq <= last.Seq {
		// Already (partly) delivered: the overlap must be the same records.
		seq := min(b.LastSeq, last.Seq)
		have, err := copyLine(f, seq, last)
		if err != nil {
			return fmt.Errorf("reading audit copy %s: %w", path, err)
		}
		if !bytes.Equal(have, b.Lines[seq-b.FirstSeq]) {
			return fmt.Errorf("delivering seq %d-%d of job %s to %s: record %d differs from the copy's: %w", b.FirstSeq, b.LastSeq, b.Job, path, seq, ErrCopyConflict)
		}
	}
	var buf bytes.Buffer
	seq := b.FirstSeq
	for _, l := range b.Lines {
		if seq > last.Seq {
			buf.Write(l)
			buf.WriteByte('\n')
		}
		seq++
	}
	if buf.Len() == 0 {
		return nil
	}
	if last.Type == Seal {
		return fmt.Errorf("delivering seq %d-%d of job %s to %s: the copy is sealed: %w", b.FirstSeq, b.LastSeq, b.Job, path, ErrCopyConflict)
	}
	if b.FirstSeq > last.Seq+1 {
		return fmt.Errorf("delivering seq %d-%d of job %s to %s: the copy ends at seq %d: %w", b.FirstSeq, b.LastSeq, b.Job, path, last.Seq, ErrCopyConflict)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("writing audit copy: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing audit copy: %w", err)
	}
	return nil
}

// flockCtx takes an exclusive flock on f, polling so that ctx is honoured.
func flockCtx(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// copyTail is the last record of a copy (zero for an empty copy).
type copyTail struct {
	Seq  int64
	Type EventType
	Size int64 // bytes of complete lines
}

// tidyCopy cuts a torn last line off the copy and returns its last record,
// reading only the copy's tail.
func tidyCopy(f *os.File) (copyTail, error) {
	st, err := f.Stat()
	if err != nil {
		return copyTail{}, err
	}
	size := st.Size()
	n := min(size, 2*MaxRecordBytes+2)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil && !errors.Is(err, io.EOF) {
		return copyTail{}, err
	}
	keep := lastLine(buf)
	if len(keep) == 0 && n < size {
		return copyTail{}, errors.New("no complete record in the copy's last 2 MiB")
	}
	if cut := int64(len(buf) - len(keep)); cut > 0 {
		size -= cut
		if err := f.Truncate(size); err != nil {
			return copyTail{}, err
		}
	}
	keep = bytes.TrimSuffix(keep, []byte("\n"))
	if len(keep) == 0 {
		return copyTail{Size: size}, nil
	}
	rec, err := ParseRecord(keep[bytes.LastIndexByte(keep, '\n')+1:])
	if err != nil {
		return copyTail{}, err
	}
	return copyTail{Seq: rec.Seq, Type: rec.Type, Size: size}, nil
}

// copyLine returns the copy's record number seq (1-based, one per line).
func copyLine(f *os.File, seq int64, tail copyTail) ([]byte, error) {
	data := make([]byte, tail.Size)
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for i := int64(1); len(data) > 0; i++ {
		j := bytes.IndexByte(data, '\n')
		if j < 0 {
			break
		}
		if i == seq {
			return data[:j], nil
		}
		data = data[j+1:]
	}
	return nil, fmt.Errorf("no record %d in the copy", seq)
}

// StdoutSink writes one JSON line per record to W (stdout for journald).
// Delivery is at least once: after a restart a batch may be printed again.
type StdoutSink struct {
	W  io.Writer
	mu sync.Mutex
}

// Name implements Sink.
func (s *StdoutSink) Name() string { return "stdout" }

// Deliver implements Sink.
func (s *StdoutSink) Deliver(_ context.Context, b Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := bufio.NewWriter(s.W)
	for _, l := range b.Lines {
		w.Write(l)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("writing audit records to stdout: %w", err)
	}
	return nil
}

// HTTP headers the HTTP sink sends with every batch, so a collector can
// deduplicate re-sent batches.
const (
	HeaderJob      = "X-Airlock-Job"
	HeaderFirstSeq = "X-Airlock-Seq-First"
	HeaderLastSeq  = "X-Airlock-Seq-Last"
	HeaderSealed   = "X-Airlock-Sealed"
)

// HTTPSink POSTs each batch as application/x-ndjson to URL with a bearer
// token. Any 2xx accepts the batch; anything else is an error the Shipper
// retries (honouring Retry-After on 429 and 503). One attempt per Deliver:
// back-off is the Shipper's job.
type HTTPSink struct {
	URL    string
	token  string
	client *http.Client
}

// NewHTTPSink builds the sink. caFile, if set, replaces the system roots
// with the PEM certificates it holds; TLS verification is always on.
// token (may be empty) is sent as "Authorization: Bearer"; it is never
// logged or put in an error.
func NewHTTPSink(url, token, caFile string) (*HTTPSink, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // audit must not take a detour through an environment proxy
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading audit http CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reading audit http CA file %s: no PEM certificates", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &HTTPSink{URL: url, token: token, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}, nil
}

// Name implements Sink.
func (h *HTTPSink) Name() string { return "http" }

// RetryAfterError is a delivery failure that says when to try again.
type RetryAfterError struct {
	Status int
	After  time.Duration
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("collector answered %d, retry after %s", e.Status, e.After)
}

// RetryAfter implements the Shipper's retry hint.
func (e *RetryAfterError) RetryAfter() time.Duration { return e.After }

// Deliver implements Sink.
func (h *HTTPSink) Deliver(ctx context.Context, b Batch) error {
	var body bytes.Buffer
	for _, l := range b.Lines {
		body.Write(l)
		body.WriteByte('\n')
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, &body)
	if err != nil {
		return fmt.Errorf("building audit request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set(HeaderJob, b.Job)
	req.Header.Set(HeaderFirstSeq, strconv.FormatInt(b.FirstSeq, 10))
	req.Header.Set(HeaderLastSeq, strconv.FormatInt(b.LastSeq, 10))
	req.Header.Set(HeaderSealed, strconv.FormatBool(b.Sealed))
	req.Header.Set("Idempotency-Key", fmt.Sprintf("%s:%d-%d", b.Job, b.FirstSeq, b.LastSeq))
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("posting audit records: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		return &RetryAfterError{Status: resp.StatusCode, After: d}
	}
	return fmt.Errorf("posting audit records: collector answered %s", resp.Status)
}

// parseRetryAfter reads delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
