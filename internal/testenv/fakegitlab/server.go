// Package fakegitlab is an in-process GitLab speaking the runner API over a
// real loopback socket, for tests. It follows the documented protocol
// (../shared/research/gitlab-protocol.md): runner registration and
// verification, the job request long poll with X-GitLab-Last-Update, the
// incremental trace with Content-Range, 416 resume and Job-Status, the final
// job update with 202/412, server-side cancel and artifact uploads; plus
// fault injection (429 with Retry-After, 5xx storms, 409 races) and
// accessors to assert on what it received.
package fakegitlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// JobID identifies a job in the fake.
type JobID = int64

// Request is one request the fake received.
type Request struct {
	Time   time.Time
	Method string
	Path   string
	Query  string
	Header http.Header
	Body   []byte
}

// Fault makes the next Count requests matching Method and Path (a prefix;
// "" matches everything) fail with Status before normal handling.
type Fault struct {
	Method     string
	Path       string
	Status     int
	Count      int
	RetryAfter string // Retry-After header value, if any
}

type runner struct {
	id        int64
	token     string
	orphaned  bool
	managers  map[string]bool
	expiresAt time.Time
}

// Server is the fake GitLab. Its methods are safe for concurrent use.
type Server struct {
	URL string // base URL, e.g. http://127.0.0.1:port

	srv *httptest.Server
	mux *http.ServeMux

	mu                   sync.Mutex
	closed               chan struct{}
	changed              chan struct{} // closed and replaced on every queue change
	nextID               int64
	runners              map[string]*runner
	regTokens            map[string]bool
	registrationDisabled bool
	legacyVerify         bool
	longPoll             time.Duration
	lastUpdate           int64
	queue                []JobID
	jobs                 map[JobID]*fakeJob
	faults               []*Fault
	requests             []Request
	traceLimit           int
	traceInterval        int
	redirectArtifacts    int
	objectStorage        bool
	objects              *objectStore
}

// New starts a fake GitLab on a loopback port; it is closed when the test
// ends.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		closed:        make(chan struct{}),
		changed:       make(chan struct{}),
		nextID:        1000,
		runners:       map[string]*runner{},
		regTokens:     map[string]bool{},
		jobs:          map[JobID]*fakeJob{},
		traceLimit:    64 << 20,
		traceInterval: 3,
		longPoll:      0,
	}
	s.objects = newObjectStore()
	s.mux = http.NewServeMux()
	s.routes()
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close stops the server, releasing held long polls first.
func (s *Server) Close() {
	s.mu.Lock()
	select {
	case <-s.closed:
		s.mu.Unlock()
		return
	default:
		close(s.closed)
	}
	s.mu.Unlock()
	s.srv.Close()
	s.objects.srv.Close()
}

// Client returns an http.Client for the server; it also reaches the
// fake's object storage at ObjectStorageHost (without DNS).
func (s *Server) Client() *http.Client {
	c := s.srv.Client()
	if t, ok := c.Transport.(*http.Transport); ok {
		t = t.Clone()
		t.DialContext = s.objects.dialContext
		c.Transport = t
	}
	return c
}

func (s *Server) routes() {
	s.mux.HandleFunc("POST /api/v4/runners/verify", s.handleVerify)
	s.mux.HandleFunc("POST /api/v4/runners", s.handleRegister)
	s.mux.HandleFunc("DELETE /api/v4/runners", s.handleUnregister)
	s.mux.HandleFunc("DELETE /api/v4/runners/managers", s.handleUnregisterManager)
	s.mux.HandleFunc("POST /api/v4/runners/reset_authentication_token", s.handleResetToken)
	s.mux.HandleFunc("POST /api/v4/jobs/request", s.handleRequestJob)
	s.mux.HandleFunc("PATCH /api/v4/jobs/{id}/trace", s.handleTrace)
	s.mux.HandleFunc("PUT /api/v4/jobs/{id}", s.handleUpdate)
	s.mux.HandleFunc("POST /api/v4/jobs/{id}/artifacts", s.handleArtifacts)
	s.mux.HandleFunc("GET /api/v4/jobs/{id}/artifacts", s.handleDownload)
}

const redirectPrefix = "/redirected"

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 128<<20))
	if err != nil {
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	path := strings.TrimPrefix(r.URL.Path, redirectPrefix)
	s.mu.Lock()
	s.requests = append(s.requests, Request{
		Time: time.Now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		Header: r.Header.Clone(), Body: body,
	})
	for i, f := range s.faults {
		if (f.Method == "" || f.Method == r.Method) && strings.HasPrefix(path, f.Path) {
			f.Count--
			if f.Count <= 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
			s.mu.Unlock()
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			writeJSON(w, f.Status, map[string]any{"message": http.StatusText(f.Status)})
			return
		}
	}
	s.mu.Unlock()
	if path != r.URL.Path {
		r.URL.Path = path
		r.URL.RawPath = ""
		r = r.WithContext(withRedirected(r.Context()))
	}
	s.mux.ServeHTTP(w, r)
}

// InjectFault queues a fault (see Fault).
func (s *Server) InjectFault(f Fault) {
	if f.Count <= 0 {
		f.Count = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// Requests returns every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// RequestsTo returns the requests with method and path.
func (s *Server) RequestsTo(method, path string) []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Method == method && r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// BodiesContain reports whether any request body or URL contained v.
func (s *Server) BodiesContain(v string) bool {
	for _, r := range s.Requests() {
		if bytes.Contains(r.Body, []byte(v)) || strings.Contains(r.Path+"?"+r.Query, v) {
			return true
		}
	}
	return false
}

// AddRunner makes token a valid runner authentication token (as created in
// the GitLab UI) and returns the runner id.
func (s *Server) AddRunner(token string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addRunnerLocked(token).id
}

func (s *Server) addRunnerLocked(token string) *runner {
	s.nextID++
	rn := &runner{id: s.nextID, token: token, managers: map[string]bool{}, expiresAt: time.Now().Add(90 * 24 * time.Hour).UTC().Truncate(time.Second)}
	s.runners[token] = rn
	return rn
}

// HasRunner reports whether token is a valid runner token.
func (s *Server) HasRunner(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runners[token] != nil
}

// Managers returns the system ids that verified with the runner token.
func (s *Server) Managers(token string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if rn := s.runners[token]; rn != nil {
		for m := range rn.managers {
			out = append(out, m)
		}
	}
	return out
}

// SetOrphaned makes verify answer 422 for token.
func (s *Server) SetOrphaned(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rn := s.runners[token]; rn != nil {
		rn.orphaned = true
	}
}

// AddRegistrationToken accepts token for legacy registration.
func (s *Server) AddRegistrationToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.regTokens[token] = true
}

// SetRegistrationDisabled makes legacy registration answer 410.
func (s *Server) SetRegistrationDisabled(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.registrationDisabled = v
}

// SetLegacyVerify makes verify answer a bare "200" like old GitLab.
func (s *Server) SetLegacyVerify(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.legacyVerify = v
}

// SetLongPoll makes jobs/request hold a request up to d when there is no
// job and its last_update is current (Workhorse's long poll). 0 disables.
func (s *Server) SetLongPoll(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.longPoll = d
}

// SetTraceLimit makes trace PATCHes beyond n stored bytes answer 403.
func (s *Server) SetTraceLimit(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traceLimit = n
}

// SetTraceUpdateInterval sets X-GitLab-Trace-Update-Interval (seconds).
func (s *Server) SetTraceUpdateInterval(seconds int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traceInterval = seconds
}

// RedirectArtifacts answers the next n artifact uploads with a 307 to the
// same endpoint under another path.
func (s *Server) RedirectArtifacts(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.redirectArtifacts = n
}

func randomToken(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func decodeBody(r *http.Request, v any) bool {
	return json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(v) == nil
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token    string `json:"token"`
		SystemID string `json:"system_id"`
	}
	if !decodeBody(r, &in) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid body"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rn := s.runners[in.Token]
	switch {
	case rn == nil:
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
	case rn.orphaned:
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"message": "Runner is orphaned"})
	case s.legacyVerify:
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "200")
	default:
		if in.SystemID != "" {
			rn.managers[in.SystemID] = true
		}
		writeJSON(w, http.StatusOK, map[string]any{"id": rn.id, "token": rn.token, "token_expires_at": rn.expiresAt.Format(time.RFC3339)})
	}
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token string `json:"token"`
	}
	if !decodeBody(r, &in) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid body"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.registrationDisabled:
		writeJSON(w, http.StatusGone, map[string]any{"message": "runner registration disallowed"})
	case !s.regTokens[in.Token]:
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
	default:
		rn := s.addRunnerLocked(randomToken("glrt-"))
		writeJSON(w, http.StatusCreated, map[string]any{"id": rn.id, "token": rn.token, "token_expires_at": nil})
	}
}

func (s *Server) handleUnregister(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token string `json:"token"`
	}
	if !decodeBody(r, &in) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid body"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runners[in.Token] == nil {
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
		return
	}
	delete(s.runners, in.Token)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleUnregisterManager(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token    string `json:"token"`
		SystemID string `json:"system_id"`
	}
	if !decodeBody(r, &in) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid body"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rn := s.runners[in.Token]
	if rn == nil {
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
		return
	}
	delete(rn.managers, in.SystemID)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleResetToken(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token string `json:"token"`
	}
	if !decodeBody(r, &in) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid body"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rn := s.runners[in.Token]
	if rn == nil {
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
		return
	}
	delete(s.runners, in.Token)
	rn.token = randomToken("glrt-")
	rn.expiresAt = time.Now().Add(90 * 24 * time.Hour).UTC().Truncate(time.Second)
	s.runners[rn.token] = rn
	writeJSON(w, http.StatusCreated, map[string]any{"token": rn.token, "token_expires_at": rn.expiresAt.Format(time.RFC3339)})
}
