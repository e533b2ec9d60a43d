// Package fakevault is an httptest Vault speaking the parts of Vault's
// HTTP API that Airlock uses: token create / lookup-self / revoke-accessor,
// AppRole login, dynamic secret reads with leases, sys/leases/revoke and
// KV v2 reads, with Vault's status codes and JSON bodies ({"errors":[...]}
// with 400/403/404, 204 on revoke). It tracks every token and lease so a
// test can assert what is still live.
package fakevault

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Token is a token the fake issued.
type Token struct {
	ID             string
	Accessor       string
	Policies       []string
	Meta           map[string]string
	Parent         string
	TTL            time.Duration
	ExplicitMaxTTL time.Duration
	Expires        time.Time
	Revoked        bool
	Type           string
	DisplayName    string
}

// Lease is a dynamic secret lease the fake issued.
type Lease struct {
	ID      string
	Path    string
	Token   string // token that read it; revoking the token revokes the lease
	Expires time.Time
	Revoked bool
}

type dynamic struct {
	data map[string]any
	ttl  time.Duration
}

// Server is a fake Vault.
type Server struct {
	URL       string
	RootToken string

	srv *httptest.Server

	mu          sync.Mutex
	tokens      map[string]*Token // by id
	byAccessor  map[string]*Token
	leases      map[string]*Lease
	kv          map[string]map[string]any // "mount/path" -> data
	approles    map[string]approle        // role_id -> secret
	dynamics    map[string]dynamic        // path -> template
	failRevokes int
	requests    map[string]int            // "METHOD /path" -> count
	jwtRoles    map[string]jwtRole        // "path\x00role" -> role (jwt.go)
	kv1         map[string]map[string]any // KV v1 "mount/path" -> data
}

type approle struct {
	secretID string
	policies []string
	ttl      time.Duration
}

// New starts a fake Vault on loopback, closed when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		RootToken:  "hvs.root-" + randHex(8),
		tokens:     map[string]*Token{},
		byAccessor: map[string]*Token{},
		leases:     map[string]*Lease{},
		kv:         map[string]map[string]any{},
		approles:   map[string]approle{},
		dynamics:   map[string]dynamic{},
		requests:   map[string]int{},
	}
	root := &Token{ID: s.RootToken, Accessor: randHex(12), Policies: []string{"root"}, Type: "service"}
	s.tokens[root.ID], s.byAccessor[root.Accessor] = root, root
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(s.srv.Close)
	return s
}

// PutKV stores a KV v2 secret at mount/path.
func (s *Server) PutKV(mount, path string, data map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv[mount+"/"+path] = data
}

// AddAppRole registers an AppRole login.
func (s *Server) AddAppRole(roleID, secretID string, policies []string, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.approles[roleID] = approle{secretID: secretID, policies: policies, ttl: ttl}
}

// AddDynamic makes reads of path return data under a fresh lease.
func (s *Server) AddDynamic(path string, data map[string]any, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dynamics[strings.Trim(path, "/")] = dynamic{data: data, ttl: ttl}
}

// FailRevokes makes the next n revoke requests (revoke-accessor and
// sys/leases/revoke) answer 500.
func (s *Server) FailRevokes(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failRevokes = n
}

// Requests returns how many requests "METHOD /v1/path" the fake served.
func (s *Server) Requests(methodPath string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[methodPath]
}

// ChildTokens returns every token created through auth/token/create.
func (s *Server) ChildTokens() []Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Token
	for _, t := range s.tokens {
		if t.Parent != "" {
			out = append(out, *t)
		}
	}
	return out
}

// LiveChildTokens returns the child tokens neither revoked nor expired.
func (s *Server) LiveChildTokens() []Token {
	var out []Token
	for _, t := range s.ChildTokens() {
		if !t.Revoked && time.Now().Before(t.Expires) {
			out = append(out, t)
		}
	}
	return out
}

// Leases returns every lease.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Lease
	for _, l := range s.leases {
		out = append(out, *l)
	}
	return out
}

// LiveLeases returns the leases neither revoked nor expired.
func (s *Server) LiveLeases() []Lease {
	var out []Lease
	for _, l := range s.Leases() {
		if !l.Revoked && time.Now().Before(l.Expires) {
			out = append(out, l)
		}
	}
	return out
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func vaultErr(w http.ResponseWriter, code int, msg ...string) {
	if msg == nil {
		msg = []string{}
	}
	writeJSON(w, code, map[string]any{"errors": msg})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[r.Method+" /v1/"+path]++
	if !strings.HasPrefix(r.URL.Path, "/v1/") {
		vaultErr(w, http.StatusNotFound)
		return
	}
	if strings.HasPrefix(path, "auth/approle/login") {
		s.approleLogin(w, r)
		return
	}
	if s.jwtLogin(w, r, path) {
		return
	}
	tok := s.tokens[r.Header.Get("X-Vault-Token")]
	if tok == nil || tok.Revoked || (!tok.Expires.IsZero() && time.Now().After(tok.Expires)) {
		vaultErr(w, http.StatusForbidden, "permission denied")
		return
	}
	switch {
	case path == "auth/token/create" && (r.Method == http.MethodPost || r.Method == http.MethodPut):
		s.tokenCreate(w, r, tok)
	case path == "auth/token/lookup-self" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
			"id": tok.ID, "accessor": tok.Accessor, "policies": tok.Policies, "meta": tok.Meta,
			"ttl": int(time.Until(tok.Expires).Seconds()), "type": tok.Type}})
	case path == "auth/token/revoke-accessor" && (r.Method == http.MethodPost || r.Method == http.MethodPut):
		s.revokeAccessor(w, r)
	case path == "sys/leases/revoke" && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		s.revokeLease(w, r)
	case path == "auth/token/revoke-self" && (r.Method == http.MethodPost || r.Method == http.MethodPut):
		s.revokeSelf(w, tok)
	case r.Method == http.MethodGet && s.readKV1(w, path):
	case r.Method == http.MethodGet:
		s.read(w, path, tok)
	default:
		vaultErr(w, http.StatusMethodNotAllowed, "unsupported operation")
	}
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	return dec.Decode(v)
}

func parseDur(v any) (time.Duration, error) {
	switch x := v.(type) {
	case nil:
		return 0, nil
	case float64:
		return time.Duration(x) * time.Second, nil
	case string:
		if x == "" {
			return 0, nil
		}
		if d, err := time.ParseDuration(x); err == nil {
			return d, nil
		}
		var n int
		if _, err := fmt.Sscanf(x, "%d", &n); err == nil {
			return time.Duration(n) * time.Second, nil
		}
	}
	return 0, fmt.Errorf("invalid duration %v", v)
}

func (s *Server) issue(parent *Token, policies []string, meta map[string]string, ttl, maxTTL time.Duration) *Token {
	if ttl == 0 {
		ttl = 768 * time.Hour
	}
	if maxTTL > 0 && ttl > maxTTL {
		ttl = maxTTL
	}
	t := &Token{ID: "hvs." + randHex(12), Accessor: randHex(12), Policies: policies, Meta: meta,
		TTL: ttl, ExplicitMaxTTL: maxTTL, Expires: time.Now().Add(ttl), Type: "service"}
	if parent != nil {
		t.Parent = parent.ID
		if !parent.Expires.IsZero() && t.Expires.After(parent.Expires) {
			t.Expires = parent.Expires
		}
	}
	s.tokens[t.ID], s.byAccessor[t.Accessor] = t, t
	return t
}

func authBody(t *Token) map[string]any {
	return map[string]any{
		"request_id": randHex(8), "lease_id": "", "renewable": false, "lease_duration": 0,
		"data": nil, "wrap_info": nil, "warnings": nil,
		"auth": map[string]any{
			"client_token": t.ID, "accessor": t.Accessor, "policies": t.Policies, "token_policies": t.Policies,
			"metadata": t.Meta, "lease_duration": int(t.TTL.Seconds()), "renewable": false,
			"entity_id": "", "token_type": t.Type, "orphan": t.Parent == "",
		},
	}
}

func (s *Server) tokenCreate(w http.ResponseWriter, r *http.Request, parent *Token) {
	var req struct {
		Policies       []string          `json:"policies"`
		Meta           map[string]string `json:"meta"`
		TTL            any               `json:"ttl"`
		ExplicitMaxTTL any               `json:"explicit_max_ttl"`
		Type           string            `json:"type"`
		DisplayName    string            `json:"display_name"`
	}
	if err := decode(r, &req); err != nil {
		vaultErr(w, http.StatusBadRequest, "error parsing JSON")
		return
	}
	ttl, err1 := parseDur(req.TTL)
	maxTTL, err2 := parseDur(req.ExplicitMaxTTL)
	if err1 != nil || err2 != nil {
		vaultErr(w, http.StatusBadRequest, "invalid ttl")
		return
	}
	if req.Type == "batch" {
		vaultErr(w, http.StatusBadRequest, "batch tokens are not supported by this fake")
		return
	}
	policies := req.Policies
	if len(policies) == 0 {
		policies = parent.Policies
	}
	if !slices.Contains(parent.Policies, "root") {
		for _, p := range policies {
			if p != "default" && !slices.Contains(parent.Policies, p) {
				vaultErr(w, http.StatusBadRequest, "child policies must be subset of parent")
				return
			}
		}
	}
	t := s.issue(parent, policies, req.Meta, ttl, maxTTL)
	t.DisplayName = req.DisplayName
	writeJSON(w, http.StatusOK, authBody(t))
}

func (s *Server) approleLogin(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		vaultErr(w, http.StatusMethodNotAllowed, "unsupported operation")
		return
	}
	var req struct {
		RoleID   string `json:"role_id"`
		SecretID string `json:"secret_id"`
	}
	if err := decode(r, &req); err != nil {
		vaultErr(w, http.StatusBadRequest, "error parsing JSON")
		return
	}
	ar, ok := s.approles[req.RoleID]
	if !ok {
		vaultErr(w, http.StatusBadRequest, "invalid role or secret ID")
		return
	}
	if ar.secretID != req.SecretID {
		vaultErr(w, http.StatusBadRequest, "invalid role or secret ID")
		return
	}
	t := s.issue(nil, ar.policies, map[string]string{"role_id": req.RoleID}, ar.ttl, 0)
	writeJSON(w, http.StatusOK, authBody(t))
}

// revokeTree revokes t, its children and every lease they read.
func (s *Server) revokeTree(t *Token) {
	t.Revoked = true
	for _, l := range s.leases {
		if l.Token == t.ID {
			l.Revoked = true
		}
	}
	for _, c := range s.tokens {
		if c.Parent == t.ID && !c.Revoked {
			s.revokeTree(c)
		}
	}
}

func (s *Server) failing() bool {
	if s.failRevokes > 0 {
		s.failRevokes--
		return true
	}
	return false
}

func (s *Server) revokeAccessor(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Accessor string `json:"accessor"`
	}
	if err := decode(r, &req); err != nil || req.Accessor == "" {
		vaultErr(w, http.StatusBadRequest, "missing accessor")
		return
	}
	if s.failing() {
		vaultErr(w, http.StatusInternalServerError, "internal error")
		return
	}
	t := s.byAccessor[req.Accessor]
	if t == nil || t.Revoked {
		vaultErr(w, http.StatusBadRequest, "invalid accessor")
		return
	}
	s.revokeTree(t)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) revokeLease(w http.ResponseWriter, r *http.Request) {
	var req struct {
		LeaseID string `json:"lease_id"`
	}
	if err := decode(r, &req); err != nil || req.LeaseID == "" {
		vaultErr(w, http.StatusBadRequest, "missing lease_id")
		return
	}
	if s.failing() {
		vaultErr(w, http.StatusInternalServerError, "internal error")
		return
	}
	if l := s.leases[req.LeaseID]; l != nil {
		l.Revoked = true
	}
	w.WriteHeader(http.StatusNoContent) // Vault: revoking an unknown lease is not an error
}

func (s *Server) read(w http.ResponseWriter, path string, tok *Token) {
	if d, ok := s.dynamics[path]; ok {
		l := &Lease{ID: path + "/" + randHex(10), Path: path, Token: tok.ID, Expires: time.Now().Add(d.ttl)}
		s.leases[l.ID] = l
		writeJSON(w, http.StatusOK, map[string]any{"request_id": randHex(8), "lease_id": l.ID,
			"lease_duration": int(d.ttl.Seconds()), "renewable": true, "data": d.data, "warnings": nil})
		return
	}
	if mount, rest, ok := strings.Cut(path, "/data/"); ok {
		if data, ok := s.kv[mount+"/"+rest]; ok {
			writeJSON(w, http.StatusOK, map[string]any{"request_id": randHex(8), "lease_id": "", "lease_duration": 0,
				"renewable": false, "data": map[string]any{"data": data, "metadata": map[string]any{
					"version": 1, "created_time": time.Now().UTC().Format(time.RFC3339Nano), "deletion_time": "", "destroyed": false}}})
			return
		}
	}
	vaultErr(w, http.StatusNotFound)
}
