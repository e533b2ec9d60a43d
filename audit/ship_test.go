package audit

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// collector is a fake audit collector speaking the HTTP sink's protocol.
type collector struct {
	down     atomic.Bool
	failures atomic.Int64
	mu       sync.Mutex
	lines    [][]byte
	headers  []http.Header
	got      chan int64 // last seq of each accepted batch
}

func newCollector(t *testing.T) (*collector, *httptest.Server) {
	c := &collector{got: make(chan int64, 1000)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok-123" || r.Header.Get("Content-Type") != "application/x-ndjson" {
			http.Error(w, "bad request headers", http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if c.down.Load() {
			c.failures.Add(1)
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		c.mu.Lock()
		c.lines = append(c.lines, bytes.Split(bytes.TrimSuffix(body, []byte("\n")), []byte("\n"))...)
		c.headers = append(c.headers, r.Header.Clone())
		c.mu.Unlock()
		last, _ := strconv.ParseInt(r.Header.Get(HeaderLastSeq), 10, 64)
		c.got <- last
	}))
	t.Cleanup(srv.Close)
	return c, srv
}

func startShipper(t *testing.T, s *Shipper) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func waitSeq(t *testing.T, c *collector, seq int64, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case got := <-c.got:
			if got >= seq {
				return
			}
		case <-deadline:
			t.Fatalf("collector did not receive seq %d within %s", seq, within)
		}
	}
}

func TestHTTPSinkDownThenUpDeliversEverythingOnceInOrder(t *testing.T) {
	key := testKey(t)
	state := t.TempDir()
	spool := SpoolDir(state)
	c, srv := newCollector(t)
	c.down.Store(true)
	hs, err := NewHTTPSink(srv.URL, "tok-123", "")
	if err != nil {
		t.Fatal(err)
	}
	dirSink := NewDirSink(filepath.Join(state, "audit"))
	sh := NewShipper(spool, []Sink{dirSink, hs}, ShipperOptions{MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MaxBatch: 7})
	startShipper(t, sh)

	tr, err := Open(spool, "r1", "job-42", key, WithDurable(sh.Kick))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 30 {
		if _, err := tr.Log(ctx, NewEgress(KindHTTP, fmt.Sprintf("h%d.allowed.test", i), 443, VerdictAllowed, "", 10, time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Seal(ctx, "finished"); err != nil {
		t.Fatal(err)
	}
	for c.failures.Load() < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	c.down.Store(false)
	waitSeq(t, c, 31, 10*time.Second)

	c.mu.Lock()
	lines := c.lines
	c.mu.Unlock()
	if len(lines) != 31 {
		t.Fatalf("collector got %d records, want 31 exactly once", len(lines))
	}
	for i, l := range lines {
		r, err := ParseRecord(l)
		if err != nil || r.Seq != int64(i+1) {
			t.Fatalf("collector record %d = seq %d, %v; want seq %d", i, r.Seq, err, i+1)
		}
	}
	body := append(bytes.Join(lines, []byte("\n")), '\n')
	if _, err := Verify(bytes.NewReader(body), key.Public()); err != nil {
		t.Errorf("Verify(collected) = %v", err)
	}
	c.mu.Lock()
	h := c.headers[0]
	c.mu.Unlock()
	if h.Get(HeaderJob) != "job-42" || h.Get(HeaderFirstSeq) != "1" || h.Get("Idempotency-Key") == "" {
		t.Errorf("first batch headers = %v, want job and seq range", h)
	}
	// Both sinks done: the spool file and offsets are removed, the copy verifies.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(SpoolPath(spool, "job-42")); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("spool file not removed after every sink delivered it")
		}
		time.Sleep(20 * time.Millisecond)
	}
	verifyFile(t, filepath.Join(state, "audit", "job-42.jsonl"), key)
}

func TestLiveCollectorSeesRecordsWhileTrailIsOpen(t *testing.T) {
	key := testKey(t)
	spool := t.TempDir()
	c, srv := newCollector(t)
	hs, err := NewHTTPSink(srv.URL, "tok-123", "")
	if err != nil {
		t.Fatal(err)
	}
	// No WithDurable kick: the poll alone must bring records out.
	sh := NewShipper(spool, []Sink{hs}, ShipperOptions{Interval: 100 * time.Millisecond})
	startShipper(t, sh)
	tr, err := Open(spool, "r1", "live", key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	ctx := context.Background()
	start := time.Now()
	tr.Log(ctx, NewJobAccepted("local", "", "acme/app", "main", "", false, "", "img"))
	tr.Log(ctx, NewStepStarted("build"))
	waitSeq(t, c, 2, 10*time.Second) // the goal is < 1 s; see BenchmarkLiveDelivery
	t.Logf("first records reached the collector after %s", time.Since(start))
	if _, err := tr.Log(ctx, NewStepFinished("build", 0, time.Second)); err != nil {
		t.Errorf("trail closed early: %v", err)
	}
}

func TestNoSecretInWrittenFiles(t *testing.T) {
	const secret = "s3cr3t-Value-9f8e7d"
	mask := func(s string) string { return strings.ReplaceAll(s, secret, "[MASKED]") }
	key := testKey(t)
	state := t.TempDir()
	spool := SpoolDir(state)
	var out bytes.Buffer
	sinks, err := Config{Stdout: true}.Sinks(state, "", &out)
	if err != nil {
		t.Fatal(err)
	}
	sh := NewShipper(spool, sinks, ShipperOptions{KeepSpool: true})
	tr, err := Open(spool, "r1", "job", key, WithMask(mask))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	events := []Event{
		NewCredentialMinted("deploy_token", "g1", "lease-1", Fingerprint(secret), "proxy", time.Now().Add(time.Minute)),
		NewCredentialRevokeFailed("deploy_token", "g1", "lease-1", 1, fmt.Errorf("revoking %s: 500", secret)),
		NewAlert("surrogate_misuse", "saw "+secret+" on evil.test", Fields{"nested": map[string]any{"v": []any{secret}}}),
		NewEgress(KindHTTP, "x.test", 443, VerdictDenied, "path /?t="+secret, 0, 0),
	}
	for _, ev := range events {
		rec, err := tr.Log(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != CredentialMinted && rec.Fields[FieldRedacted] != true {
			t.Errorf("%s record not marked redacted", ev.Type)
		}
	}
	if _, err := tr.Seal(ctx, "finished"); err != nil {
		t.Fatal(err)
	}
	if err := sh.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	verifyFile(t, filepath.Join(state, "audit", "job.jsonl"), key)
	files := 0
	filepath.Walk(state, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		files++
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s contains the secret value", path)
		}
		return nil
	})
	if files < 3 {
		t.Errorf("walked %d files, want spool, copy and offsets", files)
	}
	if out.Len() == 0 || bytes.Contains(out.Bytes(), []byte(secret)) {
		t.Errorf("stdout sink output empty or holds the secret")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"empty is fine", Config{}, nil},
		{"https collector", Config{HTTPURL: "https://audit.example.test/ingest", HTTPTokenSecret: "audit_token"}, nil},
		{"http to loopback", Config{HTTPURL: "http://127.0.0.1:9000/"}, nil},
		{"everything wrong", Config{Dir: "rel/dir", HTTPURL: "http://audit.example.test/", HTTPCAFile: "/nonexistent/ca.pem"},
			[]string{"audit.dir", "audit.http_url", "audit.http_ca_file"}},
		{"token without url", Config{HTTPTokenSecret: "t"}, []string{"audit.http_token_secret"}},
		{"credentials in url", Config{HTTPURL: "https://u:p@audit.example.test/"}, []string{"audit.http_url"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.cfg.Validate()
			if len(errs) != len(tc.want) {
				t.Fatalf("Validate() = %v, want %d errors naming %v", errs, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(errs[i].Error(), w+":") {
					t.Errorf("Validate()[%d] = %q, want key %s", i, errs[i], w)
				}
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"3", 3 * time.Second, true},
		{"", 0, false},
		{"soon", 0, false},
		{now.Add(5 * time.Second).Format(http.TimeFormat), 5 * time.Second, true},
	}
	for _, tc := range tests {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v, want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func newBenchCollector(b *testing.B, got chan<- int64) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		last, _ := strconv.ParseInt(r.Header.Get(HeaderLastSeq), 10, 64)
		got <- last
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}

// recordingSink keeps what it accepted; fail makes Deliver or Done fail.
type recordingSink struct {
	name     string
	mu       sync.Mutex
	seqs     []int64
	done     []string
	failDone atomic.Bool
}

func (r *recordingSink) Name() string { return r.name }

func (r *recordingSink) Deliver(_ context.Context, b Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range b.Lines {
		r.seqs = append(r.seqs, b.FirstSeq+int64(i))
	}
	return nil
}

func (r *recordingSink) Done(_ context.Context, job string) error {
	if r.failDone.Load() {
		return errors.New("upload endpoint down")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = append(r.done, job)
	return nil
}

func TestShipperResumesAfterRestart(t *testing.T) {
	key := testKey(t)
	spool := t.TempDir()
	ctx := context.Background()
	tr, err := Open(spool, "r1", "job", key)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		tr.Log(ctx, NewStepStarted("a"))
	}
	sink := &recordingSink{name: "rec"}
	if err := NewShipper(spool, []Sink{sink}, ShipperOptions{}).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		tr.Log(ctx, NewStepStarted("b"))
	}
	tr.Seal(ctx, "finished")
	// A new shipper (runner restart) resumes at seq 6; Done fails once and is retried.
	sink.failDone.Store(true)
	sh := NewShipper(spool, []Sink{sink}, ShipperOptions{})
	if err := sh.Drain(ctx); err == nil {
		t.Fatal("Drain with failing Done = nil, want an error")
	}
	sink.failDone.Store(false)
	if err := sh.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	want := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9}
	if fmt.Sprint(sink.seqs) != fmt.Sprint(want) || fmt.Sprint(sink.done) != "[job]" {
		t.Errorf("sink got seqs %v done %v, want %v done [job]", sink.seqs, sink.done, want)
	}
	if _, err := os.Stat(SpoolPath(spool, "job")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spool file still present after delivery: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(spool, "offsets", "rec")); len(ents) != 0 {
		t.Errorf("offset files left: %v", ents)
	}
}

func TestHTTPSinkVerifiesTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pemEncodeCert(srv.Certificate().Raw)
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	b := Batch{Job: "j", FirstSeq: 1, LastSeq: 1, Lines: [][]byte{[]byte(`{}`)}}
	tests := []struct {
		name    string
		caFile  string
		wantErr bool
	}{
		{"system roots refuse the test CA", "", true},
		{"configured CA file", ca, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs, err := NewHTTPSink(srv.URL, "tok", tc.caFile)
			if err != nil {
				t.Fatal(err)
			}
			err = hs.Deliver(context.Background(), b)
			if (err != nil) != tc.wantErr {
				t.Errorf("Deliver = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestBackoffHonoursRetryAfter(t *testing.T) {
	s := NewShipper(t.TempDir(), nil, ShipperOptions{MinBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second})
	if got := s.backoff(1, &RetryAfterError{Status: 503, After: 3 * time.Second}); got != 3*time.Second {
		t.Errorf("backoff(Retry-After 3s) = %v, want 3s", got)
	}
	if got := s.backoff(1, &RetryAfterError{Status: 429, After: time.Hour}); got != 10*time.Second {
		t.Errorf("backoff(Retry-After 1h) = %v, want the 10s cap", got)
	}
	for n, max := range map[int]time.Duration{1: 100 * time.Millisecond, 4: 800 * time.Millisecond, 20: 10 * time.Second} {
		got := s.backoff(n, errors.New("x"))
		if got < max/2 || got > max {
			t.Errorf("backoff(%d) = %v, want in [%v, %v]", n, got, max/2, max)
		}
	}
}

func pemEncodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
