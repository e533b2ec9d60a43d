package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DirSink keeps a verbatim copy of every trail in Dir/<job>.jsonl. It is
// idempotent: records at or below the copy's last seq are skipped, and a
// torn last line in the copy is cut off before appending.
type DirSink struct {
	Dir string

	mu   sync.Mutex
	last map[string]int64 // job -> last seq in the copy
}

// NewDirSink returns a directory sink writing into dir.
func NewDirSink(dir string) *DirSink { return &DirSink{Dir: dir, last: map[string]int64{}} }

// Name implements Sink.
func (d *DirSink) Name() string { return "dir" }

// Deliver implements Sink.
func (d *DirSink) Deliver(ctx context.Context, b Batch) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("creating audit directory: %w", err)
	}
	path := filepath.Join(d.Dir, b.Job+SpoolExt)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening audit copy: %w", err)
	}
	defer f.Close()
	last, ok := d.last[b.Job]
	if !ok {
		if last, err = tidyCopy(f); err != nil {
			return fmt.Errorf("reading audit copy %s: %w", path, err)
		}
		if err := syncDir(d.Dir); err != nil { // the copy's directory entry
			return err
		}
	}
	var buf bytes.Buffer
	seq := b.FirstSeq
	for _, l := range b.Lines {
		if seq > last {
			buf.Write(l)
			buf.WriteByte('\n')
		}
		seq++
	}
	if buf.Len() == 0 {
		d.last[b.Job] = last
		return nil
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		delete(d.last, b.Job) // re-read the copy next time
		return fmt.Errorf("writing audit copy: %w", err)
	}
	if err := f.Sync(); err != nil {
		delete(d.last, b.Job)
		return fmt.Errorf("syncing audit copy: %w", err)
	}
	d.last[b.Job] = b.LastSeq
	return nil
}

// Done implements Finisher: the job's copy is complete.
func (d *DirSink) Done(_ context.Context, job string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.last, job)
	return nil
}

// tidyCopy cuts a torn last line off the copy and returns its last seq.
func tidyCopy(f *os.File) (int64, error) {
	data, err := io.ReadAll(f)
	if err != nil {
		return 0, err
	}
	keep := lastLine(data)
	if len(keep) < len(data) {
		if err := f.Truncate(int64(len(keep))); err != nil {
			return 0, err
		}
	}
	keep = bytes.TrimSuffix(keep, []byte("\n"))
	if len(keep) == 0 {
		return 0, nil
	}
	rec, err := ParseRecord(keep[bytes.LastIndexByte(keep, '\n')+1:])
	if err != nil {
		return 0, err
	}
	return rec.Seq, nil
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
