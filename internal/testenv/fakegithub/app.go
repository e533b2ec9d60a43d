// Package fakegithub is an httptest GitHub REST API for the GitHub App
// endpoints Airlock uses: installation access tokens (app JWT verified:
// RS256 signature, iss, iat, exp at most 10 minutes ahead), token
// revocation (DELETE /installation/token, 204) and a token-authenticated
// read (GET /installation/repositories) that answers 401 once a token is
// revoked or expired. Error bodies are GitHub's {"message", "documentation_url"}.
package fakegithub

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token is an installation token the fake issued.
type Token struct {
	Value        string
	Installation int64
	Repositories []string
	Permissions  map[string]string
	Expires      time.Time
	Revoked      bool
}

// App is a fake GitHub with one GitHub App.
type App struct {
	URL    string
	AppID  int64
	Key    *rsa.PrivateKey
	KeyPEM []byte // PKCS#1 PEM of Key

	srv *httptest.Server

	mu            sync.Mutex
	installations map[int64]installation
	tokens        map[string]*Token
	failDeletes   int
	mints         int
	deletes       int

	fleet   fleet // runner-fleet endpoints (runners.go)
	failJIT int
}

type installation struct {
	account string
	repos   []string // names; empty = all repositories of the account
}

// New starts a fake GitHub on loopback with app id 4242 and installation
// 100 on account "acme", closed when the test ends.
func New(t testing.TB) *App {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("generating app key: %v", err)
	}
	a := &App{
		AppID:         4242,
		Key:           key,
		KeyPEM:        pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		installations: map[int64]installation{100: {account: "acme"}},
		tokens:        map[string]*Token{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /app/installations/{id}/access_tokens", a.createToken)
	mux.HandleFunc("DELETE /installation/token", a.deleteToken)
	mux.HandleFunc("GET /installation/repositories", a.repositories)
	a.registerFleet(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { ghError(w, http.StatusNotFound, "Not Found") })
	a.srv = httptest.NewServer(mux)
	a.URL = a.srv.URL
	t.Cleanup(a.srv.Close)
	return a
}

// AddInstallation registers an installation on account limited to repos
// (none = every repository of the account).
func (a *App) AddInstallation(id int64, account string, repos ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.installations[id] = installation{account: account, repos: repos}
}

// FailDeletes makes the next n DELETE /installation/token answer 503.
func (a *App) FailDeletes(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failDeletes = n
}

// Mints is how many tokens the fake issued.
func (a *App) Mints() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mints
}

// Deletes is how many DELETE /installation/token requests the fake served.
func (a *App) Deletes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.deletes
}

// Tokens returns every token issued.
func (a *App) Tokens() []Token {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Token
	for _, t := range a.tokens {
		out = append(out, *t)
	}
	return out
}

// LiveTokens returns the tokens neither revoked nor expired.
func (a *App) LiveTokens() []Token {
	var out []Token
	for _, t := range a.Tokens() {
		if !t.Revoked && time.Now().Before(t.Expires) {
			out = append(out, t)
		}
	}
	return out
}

func ghError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg, "documentation_url": "https://docs.github.com/rest", "status": strconv.Itoa(code)})
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	for _, p := range []string{"Bearer ", "bearer ", "token "} {
		if strings.HasPrefix(h, p) {
			return strings.TrimPrefix(h, p)
		}
	}
	return ""
}

// verifyJWT checks an app JWT the way GitHub documents it.
func (a *App) verifyJWT(raw string) error {
	tok, err := jwt.Parse(raw, func(t *jwt.Token) (any, error) { return &a.Key.PublicKey, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuedAt(), jwt.WithExpirationRequired(), jwt.WithLeeway(30*time.Second))
	if err != nil {
		return err
	}
	claims := tok.Claims.(jwt.MapClaims)
	iss := fmt.Sprint(claims["iss"])
	if f, ok := claims["iss"].(float64); ok {
		iss = strconv.FormatInt(int64(f), 10)
	}
	if iss != strconv.FormatInt(a.AppID, 10) {
		return fmt.Errorf("iss %q is not this app", iss)
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return fmt.Errorf("no exp")
	}
	if time.Until(exp.Time) > 10*time.Minute+30*time.Second {
		return fmt.Errorf("'Expiration time' claim ('exp') is too far in the future")
	}
	iat, err := claims.GetIssuedAt()
	if err != nil || iat == nil {
		return fmt.Errorf("no iat")
	}
	if exp.Sub(iat.Time) > 11*time.Minute {
		return fmt.Errorf("exp - iat exceeds 10 minutes")
	}
	return nil
}

func randToken() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 36)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "ghs_" + string(b)
}

func (a *App) createToken(w http.ResponseWriter, r *http.Request) {
	if err := a.verifyJWT(bearer(r)); err != nil {
		ghError(w, http.StatusUnauthorized, "A JSON web token could not be decoded: "+err.Error())
		return
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	a.mu.Lock()
	defer a.mu.Unlock()
	inst, ok := a.installations[id]
	if err != nil || !ok {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	var req struct {
		Repositories []string          `json:"repositories"`
		Permissions  map[string]string `json:"permissions"`
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			ghError(w, http.StatusBadRequest, "Problems parsing JSON")
			return
		}
	}
	for _, name := range req.Repositories {
		if len(inst.repos) > 0 && !slices.Contains(inst.repos, name) {
			ghError(w, http.StatusUnprocessableEntity, "There is at least one repository that does not exist or is not accessible to the parent installation.")
			return
		}
	}
	for k, v := range req.Permissions {
		if v != "read" && v != "write" && v != "admin" {
			ghError(w, http.StatusUnprocessableEntity, fmt.Sprintf("The permissions requested are not granted to this installation: %s=%s", k, v))
			return
		}
	}
	t := &Token{Value: randToken(), Installation: id, Repositories: req.Repositories, Permissions: req.Permissions,
		Expires: time.Now().Add(time.Hour).Truncate(time.Second)}
	a.tokens[t.Value] = t
	a.mints++
	repos := []map[string]any{}
	for _, n := range req.Repositories {
		repos = append(repos, map[string]any{"name": n, "full_name": inst.account + "/" + n})
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{"token": t.Value, "expires_at": t.Expires.UTC().Format(time.RFC3339),
		"permissions": req.Permissions, "repository_selection": "selected", "repositories": repos})
}

func (a *App) live(r *http.Request) *Token {
	t := a.tokens[bearer(r)]
	if t == nil || t.Revoked || time.Now().After(t.Expires) {
		return nil
	}
	return t
}

func (a *App) deleteToken(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deletes++
	if a.failDeletes > 0 {
		a.failDeletes--
		ghError(w, http.StatusServiceUnavailable, "Service Unavailable")
		return
	}
	t := a.live(r)
	if t == nil {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	t.Revoked = true
	w.WriteHeader(http.StatusNoContent)
}

func (a *App) repositories(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.live(r)
	if t == nil {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	acct := a.installations[t.Installation].account
	repos := []map[string]any{}
	for _, n := range t.Repositories {
		repos = append(repos, map[string]any{"name": n, "full_name": acct + "/" + n})
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(map[string]any{"total_count": len(repos), "repositories": repos})
}
