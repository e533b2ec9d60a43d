package gitlab

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
)

// sleeps records the waits a client asked for and returns at once.
type sleeps struct {
	mu    sync.Mutex
	waits []time.Duration
	// stopAfter, when > 0, makes the n-th sleep fail (to end a loop).
	stopAfter int
}

var errStopSleeping = errors.New("test: no more sleeping")

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	n := len(s.waits)
	s.mu.Unlock()
	if s.stopAfter > 0 && n >= s.stopAfter {
		return errStopSleeping
	}
	return ctx.Err()
}

func (s *sleeps) all() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

func newTestClient(t *testing.T, fake *fakegitlab.Server, opts ...Option) (*Client, *sleeps) {
	t.Helper()
	opts = append([]Option{WithHTTPClient(fake.Client()), WithVersion("1.2.3", "abc123")}, opts...)
	c, err := New(fake.URL+"/ci/", opts...)
	if err != nil {
		t.Fatalf("New(%q) = %v", fake.URL, err)
	}
	s := &sleeps{}
	c.sleep = s.sleep
	return c, s
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestNewNormalizesURL(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"https://gitlab.test", "https://gitlab.test"},
		{"https://gitlab.test/", "https://gitlab.test"},
		{"https://gitlab.test/ci", "https://gitlab.test"},
		{"https://gitlab.test/ci/", "https://gitlab.test"},
		{"https://gitlab.test/prefix/ci", "https://gitlab.test/prefix"},
		{" http://gitlab.test:8080/ ", "http://gitlab.test:8080"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			c, err := New(tc.in)
			if err != nil {
				t.Fatalf("New(%q) = %v", tc.in, err)
			}
			if got := c.URL(); got != tc.want {
				t.Errorf("New(%q).URL() = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	for _, bad := range []string{"", "gitlab.test", "ftp://gitlab.test", "https://", "https://u:p@gitlab.test", "https://gitlab.test/?x=1"} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%q) = nil error, want one", bad)
		}
	}
}

func TestRequestHeaders(t *testing.T) {
	fake := fakegitlab.New(t)
	fake.AddRunner("glrt-good")
	c, _ := newTestClient(t, fake)
	for i := 0; i < 2; i++ {
		if _, err := c.Verify(testCtx(t), "glrt-good", "s_000000000000"); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	reqs := fake.RequestsTo("POST", "/api/v4/runners/verify")
	if len(reqs) != 2 {
		t.Fatalf("got %d verify requests, want 2", len(reqs))
	}
	if a, b := reqs[0].Header.Get("X-Request-Id"), reqs[1].Header.Get("X-Request-Id"); a == "" || a == b {
		t.Errorf("X-Request-Id = %q, %q; want distinct non-empty ids", a, b)
	}
	if ua := reqs[0].Header.Get("User-Agent"); !strings.HasPrefix(ua, "airlock/1.2.3") {
		t.Errorf("User-Agent = %q, want airlock/1.2.3...", ua)
	}
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(*fakegitlab.Server)
		token   string
		wantErr error
		wantID  bool
	}{
		{name: "valid", token: "glrt-good", wantID: true},
		{name: "unknown token", token: "glrt-bad", wantErr: ErrTokenInvalid},
		{name: "orphaned", token: "glrt-good", setup: func(s *fakegitlab.Server) { s.SetOrphaned("glrt-good") }, wantErr: ErrRunnerOrphaned},
		{name: "old GitLab plain 200", token: "glrt-good", setup: func(s *fakegitlab.Server) { s.SetLegacyVerify(true) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := fakegitlab.New(t)
			id := fake.AddRunner("glrt-good")
			if tc.setup != nil {
				tc.setup(fake)
			}
			c, _ := newTestClient(t, fake)
			got, err := c.Verify(testCtx(t), tc.token, "s_0123456789ab")
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Verify() error = %v, want %v", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), tc.token) {
					t.Errorf("Verify() error %q contains the token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify() = %v", err)
			}
			if got.Token != tc.token {
				t.Errorf("Verify().Token = %q, want %q", got.Token, tc.token)
			}
			if tc.wantID {
				if got.ID != id || got.TokenExpiresAt.IsZero() {
					t.Errorf("Verify() = id %d expires %v, want id %d and an expiry", got.ID, got.TokenExpiresAt, id)
				}
				if m := fake.Managers("glrt-good"); len(m) != 1 || m[0] != "s_0123456789ab" {
					t.Errorf("managers = %v, want [s_0123456789ab]", m)
				}
			}
		})
	}
}

func TestVerifyRetriesServerErrors(t *testing.T) {
	fake := fakegitlab.New(t)
	fake.AddRunner("glrt-good")
	fake.InjectFault(fakegitlab.Fault{Path: "/api/v4/runners/verify", Status: 502, Count: 2})
	c, sl := newTestClient(t, fake)
	if _, err := c.Verify(testCtx(t), "glrt-good", "s_0123456789ab"); err != nil {
		t.Fatalf("Verify() after 2 x 502 = %v", err)
	}
	if n := len(fake.RequestsTo("POST", "/api/v4/runners/verify")); n != 3 {
		t.Errorf("verify requests = %d, want 3", n)
	}
	if w := sl.all(); len(w) != 2 || w[0] < 100*time.Millisecond {
		t.Errorf("waits = %v, want 2 waits of at least 100ms", w)
	}
}

func TestRegister(t *testing.T) {
	tests := []struct {
		name     string
		disabled bool
		token    string
		wantErr  error
		wantMsg  string
	}{
		{name: "ok", token: "GR1348941good"},
		{name: "bad token", token: "GR1348941bad", wantMsg: "registration token is invalid"},
		{name: "disabled", token: "GR1348941good", disabled: true, wantErr: ErrRegistrationDisabled, wantMsg: "glrt-"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := fakegitlab.New(t)
			fake.AddRegistrationToken("GR1348941good")
			fake.SetRegistrationDisabled(tc.disabled)
			c, _ := newTestClient(t, fake)
			got, err := c.Register(testCtx(t), tc.token, RegisterOptions{Description: "test", Tags: []string{"a", "b"}, RunUntagged: true})
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Register() error = %v, want %v", err, tc.wantErr)
			}
			if tc.wantMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("Register() error = %v, want it to mention %q", err, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("Register() = %v", err)
			}
			if !strings.HasPrefix(got.Token, "glrt-") || got.ID == 0 || !fake.HasRunner(got.Token) {
				t.Errorf("Register() = id %d token prefix ok=%v, want a registered runner", got.ID, strings.HasPrefix(got.Token, "glrt-"))
			}
			body := string(fake.RequestsTo("POST", "/api/v4/runners")[0].Body)
			if !strings.Contains(body, `"tag_list":"a,b"`) {
				t.Errorf("register body %s lacks tag_list a,b", body)
			}
		})
	}
}

func TestUnregisterAndReset(t *testing.T) {
	fake := fakegitlab.New(t)
	fake.AddRunner("glrt-one")
	fake.AddRunner("glrt-two")
	c, _ := newTestClient(t, fake)
	ctx := testCtx(t)

	if _, err := c.Verify(ctx, "glrt-two", "s_0123456789ab"); err != nil {
		t.Fatal(err)
	}
	if err := c.UnregisterManager(ctx, "glrt-two", "s_0123456789ab"); err != nil {
		t.Fatalf("UnregisterManager() = %v", err)
	}
	if m := fake.Managers("glrt-two"); len(m) != 0 {
		t.Errorf("managers after UnregisterManager = %v, want none", m)
	}

	if err := c.Unregister(ctx, "glrt-one"); err != nil {
		t.Fatalf("Unregister() = %v", err)
	}
	if fake.HasRunner("glrt-one") {
		t.Error("runner still registered after Unregister")
	}
	if err := c.Unregister(ctx, "glrt-one"); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("second Unregister() = %v, want ErrTokenInvalid", err)
	}

	got, err := c.ResetToken(ctx, "glrt-two")
	if err != nil {
		t.Fatalf("ResetToken() = %v", err)
	}
	if got.Token == "glrt-two" || !fake.HasRunner(got.Token) || fake.HasRunner("glrt-two") {
		t.Errorf("after ResetToken the old token must be invalid and the new one valid")
	}
	if got.TokenExpiresAt.IsZero() {
		t.Error("ResetToken().TokenExpiresAt is zero, want the new expiry")
	}
}

func TestSystemID(t *testing.T) {
	dir := t.TempDir()
	mid := filepath.Join(dir, "machine-id")
	if err := os.WriteFile(mid, []byte("0123456789abcdef0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	saved := machineIDPaths
	t.Cleanup(func() { machineIDPaths = saved })

	machineIDPaths = []string{mid}
	state := filepath.Join(dir, "state")
	got, err := SystemID(state)
	if err != nil {
		t.Fatalf("SystemID() = %v", err)
	}
	mac := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
	mac.Write([]byte("airlock"))
	if want := "s_" + hex.EncodeToString(mac.Sum(nil))[:12]; got != want {
		t.Errorf("SystemID() = %q, want %q", got, want)
	}
	b, err := os.ReadFile(filepath.Join(state, ".runner_system_id"))
	if err != nil || strings.TrimSpace(string(b)) != got {
		t.Errorf("persisted id = %q (%v), want %q", b, err, got)
	}

	machineIDPaths = []string{filepath.Join(dir, "missing")}
	other := filepath.Join(dir, "other")
	r1, err := SystemID(other)
	if err != nil || !regexp.MustCompile(`^r_[0-9a-f]{12}$`).MatchString(r1) {
		t.Fatalf("SystemID() without machine-id = %q, %v; want r_ + 12 hex", r1, err)
	}
	if r2, err := SystemID(other); err != nil || r2 != r1 {
		t.Errorf("SystemID() again = %q, %v; want the persisted %q", r2, err, r1)
	}

	if err := os.WriteFile(filepath.Join(other, ".runner_system_id"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r3, err := SystemID(other); err != nil || !strings.HasPrefix(r3, "r_") || r3 == "garbage" {
		t.Errorf("SystemID() over a damaged file = %q, %v; want a fresh id", r3, err)
	}
}

func TestDefaultTransportVerifiesTLS(t *testing.T) {
	c, err := New("https://gitlab.test")
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := c.hc.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is %T, want *http.Transport", c.hc.Transport)
	}
	if tr.TLSClientConfig.MinVersion != tls.VersionTLS12 || tr.TLSClientConfig.InsecureSkipVerify {
		t.Errorf("TLS config = min %x insecure %v, want TLS 1.2 and verification", tr.TLSClientConfig.MinVersion, tr.TLSClientConfig.InsecureSkipVerify)
	}
	if tr.ResponseHeaderTimeout < 5*time.Minute {
		t.Errorf("ResponseHeaderTimeout = %s, want a long-poll-sized timeout", tr.ResponseHeaderTimeout)
	}

	// A server with a certificate nobody trusts is refused.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("request reached a server with an untrusted certificate")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c, err = New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	sl := &sleeps{}
	c.sleep = sl.sleep
	if _, err := c.Verify(testCtx(t), "glrt-x", ""); err == nil || !strings.Contains(err.Error(), "certificate") || IsRetryable(err) {
		t.Errorf("Verify() against an untrusted certificate = %v, want a certificate error that is not retried", err)
	}
	if w := sl.all(); len(w) != 0 {
		t.Errorf("waits = %v, want none", w)
	}
}

func TestSecretsNotPrinted(t *testing.T) {
	resp, err := ParseJobResponse(examplePayload(t))
	if err != nil {
		t.Fatal(err)
	}
	creds := RunnerCredentials{ID: 3, Token: "glrt-secret-token"}
	cfg := RunnerConfig{Name: "r", Token: "glrt-secret-token"}
	for _, s := range []string{fmt.Sprintf("%v %+v %#v", resp, resp, resp), fmt.Sprintf("%v %+v %#v", creds, creds, creds), fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg)} {
		if strings.Contains(s, "glrt-secret-token") || strings.Contains(s, "ExampleJobToken") || strings.Contains(s, "Zx9-masked") {
			t.Errorf("printed %q contains a secret", s)
		}
	}
}
