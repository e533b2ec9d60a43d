package fakegithub

// Runners: a fake of GitHub's self-hosted runner protocol (see
// shared/research/github-runner-protocol.md): REST registration (JIT
// configs, registration tokens, runner-registration with the runner-admin
// and the classic agents flow, removal), the OAuth token service (client
// assertion verified with the runner's public key: PS256 required when the
// runner requires FIPS, aud exactly the authorization URL), the broker
// (sessions, long-polled messages with empty 2xx answers, acknowledge), the
// pipelines message queue answering BrokerMigration, the run service
// (acquire/renew/complete) and the results service with signed blob URLs.

import (
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Runner is a runner registered with the fake.
type Runner struct {
	ID        int64
	Name      string
	Labels    []string
	Ephemeral bool
	FIPS      bool // OAuth assertions must be PS256
	ClientID  string
	Key       *rsa.PublicKey
	Deleted   bool
	Flow      string // "jit", "runner-admin", "agents"
	Sessions  int    // sessions created
	Status    string // last status polled with
}

// Runners is a fake GitHub runner-protocol service on loopback.
type Runners struct {
	URL        string // base; the REST API is URL+"/api/v3"
	AdminToken string // PAT accepted for generate-jitconfig and registration tokens

	// Settings a test may change before use.
	PollHold        time.Duration // how long an empty poll is held (default 1 s)
	RunnerAdminFlow bool          // runner-registration answers use_v2_flow (default true)
	RequireFIPS     bool          // registered runners require PS256 (default true)
	AcknowledgeJobs bool          // job requests say should_acknowledge
	EncryptMessages bool          // sessions carry an RSA-OAEP-wrapped AES key; messages are encrypted
	LockDuration    time.Duration // how long an acquisition or renewal holds the job (default 10 min)

	srv *httptest.Server
	t   testing.TB

	mu          sync.Mutex
	wake        chan struct{}
	nextID      int64
	runners     map[int64]*Runner
	regTokens   map[string]string // token -> "register" | "remove"
	tenantToken string
	oauth       map[string]int64 // runner OAuth token -> runner id
	sessions    map[string]*fakeSession
	jobs        []*Job
	jobTokens   map[string]*Job
	blobs       map[string]*blob
	received    []string // request bodies and blob contents (no Authorization headers)
	violations  []string // protocol violations of the client
	internal    []string // handler crashes
	conflicts   int      // answer 409 to the next n session creates
	failRenews  int      // answer 503 to the next n renewjob calls
	emptyCycle  int
	actions     map[string]*fakeAction
}

type fakeSession struct {
	aesKey  []byte // messages are encrypted when set
	id      string
	runner  int64
	pending []brokerMessage
}

type brokerMessage struct {
	ID   int64  `json:"messageId"`
	Type string `json:"messageType"`
	Body string `json:"body"`
}

// NewRunners starts the fake, closed when the test ends.
func NewRunners(t testing.TB) *Runners {
	t.Helper()
	f := &Runners{
		AdminToken: "ghp_admin" + randToken()[4:], PollHold: time.Second, RunnerAdminFlow: true, RequireFIPS: true,
		t: t, wake: make(chan struct{}), nextID: 20, runners: map[int64]*Runner{}, regTokens: map[string]string{},
		oauth: map[string]int64{}, sessions: map[string]*fakeSession{}, jobTokens: map[string]*Job{}, blobs: map[string]*blob{},
		tenantToken: "tenant" + randToken()[4:],
	}
	mux := http.NewServeMux()
	// REST.
	mux.HandleFunc("POST /api/v3/{scope}/{owner}/{repo}/actions/runners/generate-jitconfig", f.generateJIT)
	mux.HandleFunc("POST /api/v3/{scope}/{owner}/{repo}/actions/runners/registration-token", f.regToken("register"))
	mux.HandleFunc("POST /api/v3/{scope}/{owner}/{repo}/actions/runners/remove-token", f.regToken("remove"))
	mux.HandleFunc("POST /api/v3/actions/runner-registration", f.runnerRegistration)
	mux.HandleFunc("GET /api/v3/{scope}/{owner}/{repo}/actions/runner-groups", f.runnerGroups)
	mux.HandleFunc("GET /api/v3/{scope}/{owner}/{repo}/actions/runners", f.listRunners)
	mux.HandleFunc("POST /api/v3/actions/runners/register", f.registerRunnerAdmin)
	mux.HandleFunc("DELETE /api/v3/{scope}/{owner}/{repo}/actions/runners/{id}", f.deleteRunner)
	f.registerRuns(mux)
	// Classic agents API on the pipelines tenant.
	mux.HandleFunc("GET /pipelines/_apis/connectionData", f.connectionData)
	mux.HandleFunc("GET /pipelines/_apis/distributedtask/pools", f.pools)
	mux.HandleFunc("POST /pipelines/_apis/distributedtask/pools/{pool}/agents", f.addAgent)
	mux.HandleFunc("DELETE /pipelines/_apis/distributedtask/pools/{pool}/agents/{id}", f.deleteAgent)
	mux.HandleFunc("POST /pipelines/_apis/distributedtask/pools/{pool}/sessions", f.createSession)
	mux.HandleFunc("DELETE /pipelines/_apis/distributedtask/pools/{pool}/sessions/{id}", f.deleteSession)
	mux.HandleFunc("GET /pipelines/_apis/distributedtask/pools/{pool}/messages", f.pipelinesMessage)
	mux.HandleFunc("DELETE /pipelines/_apis/distributedtask/pools/{pool}/messages/{id}", f.deletePipelinesMessage)
	// OAuth and broker.
	mux.HandleFunc("POST /oauth/token", f.token)
	mux.HandleFunc("POST /broker/session", f.createSession)
	mux.HandleFunc("DELETE /broker/session", f.deleteSession)
	mux.HandleFunc("GET /broker/message", f.brokerMessage)
	mux.HandleFunc("POST /broker/acknowledge", f.acknowledge)
	// Run service, results and blobs.
	mux.HandleFunc("POST /run/acquirejob", f.acquireJob)
	mux.HandleFunc("POST /run/renewjob", f.renewJob)
	mux.HandleFunc("POST /run/completejob", f.completeJob)
	mux.HandleFunc("POST /results/twirp/{service}/{method}", f.results)
	mux.HandleFunc("PUT /blob/{key...}", f.putBlob)
	// Launch service (an absolute path, as the official client builds it)
	// and action tarballs.
	mux.HandleFunc("POST /actions/build/{plan}/jobs/{job}/runnerresolve/actions", f.resolveActions)
	mux.HandleFunc("GET /_tarballs/{key...}", f.tarball)
	mux.HandleFunc("GET /feed/{job}", f.feed)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		f.violation("unknown endpoint %s %s", r.Method, r.URL.Path)
		ghError(w, http.StatusNotFound, "Not Found")
	})
	f.srv = httptest.NewServer(f.recover(mux))
	f.URL = f.srv.URL
	t.Cleanup(f.srv.Close)
	return f
}

// recover turns a handler crash into a 500 listed by InternalErrors, and
// records every request body.
func (f *Runners) recover(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				f.mu.Lock()
				f.internal = append(f.internal, fmt.Sprintf("%s %s: %v", r.Method, r.URL.Path, v))
				f.mu.Unlock()
				http.Error(w, "internal error", http.StatusInternalServerError)
			}
		}()
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		f.mu.Lock()
		f.received = append(f.received, r.Method+" "+r.URL.RequestURI()+"\n"+string(body))
		f.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (f *Runners) violation(format string, a ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.violations = append(f.violations, fmt.Sprintf(format, a...))
}

// Violations lists the protocol mistakes the client made.
func (f *Runners) Violations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.violations...)
}

// InternalErrors lists handler crashes (fake bugs).
func (f *Runners) InternalErrors() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.internal...)
}

// Received is everything clients sent the fake except Authorization
// headers: request lines and bodies, blob contents. Credentials must never
// show up here.
func (f *Runners) Received() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.received, "\n")
}

// Runner returns a registered runner by id.
func (f *Runners) Runner(id int64) (Runner, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.runners[id]
	if !ok {
		return Runner{}, false
	}
	return *r, true
}

// Runners lists the runners not deleted.
func (f *Runners) Runners() []Runner {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Runner
	for _, r := range f.runners {
		if !r.Deleted {
			out = append(out, *r)
		}
	}
	return out
}

// DeleteRunner deletes a runner as an admin would in the UI: its OAuth
// exchange answers invalid_client and the broker RunnerNotFound.
func (f *Runners) DeleteRunner(id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.runners[id]; ok {
		f.dropRunner(r)
	}
}

// ConflictSessions makes the next n session creates answer 409.
func (f *Runners) ConflictSessions(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conflicts = n
}

// FailRenewals makes the next n renewjob calls answer 503.
func (f *Runners) FailRenewals(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failRenews = n
}

// RegistrationToken mints a registration token as the UI does.
func (f *Runners) RegistrationToken() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok := "AABB" + strings.ToUpper(randToken()[4:30])
	f.regTokens[tok] = "register"
	return tok
}

// RemoveToken mints a remove token as the UI does.
func (f *Runners) RemoveToken() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok := "AACC" + strings.ToUpper(randToken()[4:30])
	f.regTokens[tok] = "remove"
	return tok
}

// GitHubURL is the repository URL runners register for.
func (f *Runners) GitHubURL() string { return f.URL + "/acme/app" }

func (f *Runners) broadcast() {
	close(f.wake)
	f.wake = make(chan struct{})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func brokerError(w http.ResponseWriter, code int, kind, msg string) {
	writeJSON(w, code, map[string]any{"source": "actions-broker-listener", "errorKind": kind, "statusCode": code, "errorMessage": msg})
}

func remoteAuth(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if strings.HasPrefix(h, "RemoteAuth ") {
		return strings.TrimPrefix(h, "RemoteAuth ")
	}
	return ""
}

func (f *Runners) githubURL(r *http.Request) string {
	return f.URL + "/" + r.PathValue("owner") + "/" + r.PathValue("repo")
}

func (f *Runners) authURL() string { return f.URL + "/oauth/token" }

func (f *Runners) newRunner(name string, labels []string, ephemeral bool, key *rsa.PublicKey, flow string) *Runner {
	f.nextID++
	r := &Runner{ID: f.nextID, Name: name, Labels: append([]string{"self-hosted", "Linux", "X64"}, labels...), Ephemeral: ephemeral,
		FIPS: f.RequireFIPS, ClientID: fmt.Sprintf("9a33a1f3-0000-4000-8000-%012d", f.nextID), Key: key, Flow: flow}
	f.runners[r.ID] = r
	return r
}

func (f *Runners) generateJIT(w http.ResponseWriter, r *http.Request) {
	if bearer(r) != f.AdminToken {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	var req struct {
		Name          string   `json:"name"`
		RunnerGroupID *int64   `json:"runner_group_id"`
		Labels        []string `json:"labels"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Name == "" {
		ghError(w, http.StatusUnprocessableEntity, "Invalid request")
		return
	}
	if req.RunnerGroupID == nil {
		ghError(w, http.StatusUnprocessableEntity, "runner_group_id is required")
		return
	}
	key := mustKey()
	f.mu.Lock()
	for _, x := range f.runners {
		if x.Name == req.Name && !x.Deleted {
			f.mu.Unlock()
			ghError(w, http.StatusConflict, "Already exists - A runner with the name already exists")
			return
		}
	}
	run := f.newRunner(req.Name, req.Labels, true, &key.PublicKey, "jit")
	f.mu.Unlock()
	enc := f.encodeJIT(run, key, f.githubURL(r))
	writeJSON(w, http.StatusCreated, map[string]any{
		"runner":             map[string]any{"id": run.ID, "name": run.Name, "os": "unknown", "status": "offline", "busy": false},
		"encoded_jit_config": enc,
	})
}

// JITConfig registers an ephemeral runner directly (no REST call) and
// returns its encoded JIT config and id.
func (f *Runners) JITConfig(name string, labels ...string) (string, int64) {
	key := mustKey()
	f.mu.Lock()
	run := f.newRunner(name, labels, true, &key.PublicKey, "jit")
	f.mu.Unlock()
	return f.encodeJIT(run, key, f.URL+"/acme/app"), run.ID
}

// encodeJIT builds the three files the way GitHub does: ids and flags as
// strings, base64 of a JSON object of base64 files.
func (f *Runners) encodeJIT(run *Runner, key *rsa.PrivateKey, ghURL string) string {
	runner, _ := json.Marshal(map[string]string{
		"AgentId": strconv.FormatInt(run.ID, 10), "AgentName": run.Name, "PoolId": "1", "PoolName": "Default",
		"ServerUrl": f.URL + "/pipelines/", "GitHubUrl": ghURL, "WorkFolder": "_work",
		"UseV2Flow": "True", "ServerUrlV2": f.URL + "/broker/", "Ephemeral": "True", "DisableUpdate": "True",
	})
	fips := "False"
	if run.FIPS {
		fips = "True"
	}
	creds, _ := json.Marshal(map[string]any{"Scheme": "OAuth", "Data": map[string]string{
		"clientId": run.ClientID, "authorizationUrl": f.authURL(), "requireFipsCryptography": fips}})
	key.Precompute()
	b64 := func(n *big.Int) string { return base64.StdEncoding.EncodeToString(n.Bytes()) }
	params, _ := json.Marshal(map[string]string{
		"d": b64(key.D), "dp": b64(key.Precomputed.Dp), "dq": b64(key.Precomputed.Dq),
		"exponent": b64(big.NewInt(int64(key.E))), "inverseQ": b64(key.Precomputed.Qinv),
		"modulus": b64(key.N), "p": b64(key.Primes[0]), "q": b64(key.Primes[1]),
	})
	files, _ := json.Marshal(map[string]string{
		".runner":                base64.StdEncoding.EncodeToString(runner),
		".credentials":           base64.StdEncoding.EncodeToString(creds),
		".credentials_rsaparams": base64.StdEncoding.EncodeToString(params),
	})
	return base64.StdEncoding.EncodeToString(files)
}

func (f *Runners) regToken(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if bearer(r) != f.AdminToken {
			ghError(w, http.StatusUnauthorized, "Bad credentials")
			return
		}
		f.mu.Lock()
		tok := "AABB" + strings.ToUpper(randToken()[4:30])
		f.regTokens[tok] = kind
		f.mu.Unlock()
		writeJSON(w, http.StatusCreated, map[string]string{"token": tok, "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
	}
}

// validRegToken accepts a registration (or remove) token of the kind.
func (f *Runners) validRegToken(tok, kind string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return tok != "" && f.regTokens[tok] == kind
}

func (f *Runners) runnerRegistration(w http.ResponseWriter, r *http.Request) {
	var req struct {
		URL   string `json:"url"`
		Event string `json:"runner_event"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.URL == "" {
		ghError(w, http.StatusBadRequest, "Invalid request")
		return
	}
	kind := "register"
	if req.Event == "remove" {
		kind = "remove"
	}
	if !f.validRegToken(remoteAuth(r), kind) {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"url": f.URL + "/pipelines/", "token_schema": "OAuthAccessToken",
		"token": f.tenantToken, "use_v2_flow": f.RunnerAdminFlow})
}

func (f *Runners) runnerGroups(w http.ResponseWriter, r *http.Request) {
	if !f.validRegToken(remoteAuth(r), "register") && !f.validRegToken(remoteAuth(r), "remove") {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"total_count": 2, "runner_groups": []map[string]any{
		{"id": 2, "name": "hosted", "default": false, "is_hosted": true},
		{"id": 1, "name": "Default", "default": true, "is_hosted": false},
	}})
}

func (f *Runners) listRunners(w http.ResponseWriter, r *http.Request) {
	if !f.validRegToken(remoteAuth(r), "register") && !f.validRegToken(remoteAuth(r), "remove") && bearer(r) != f.AdminToken {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	name := r.URL.Query().Get("name")
	var list []map[string]any
	for _, x := range f.Runners() {
		if name == "" || x.Name == name {
			list = append(list, map[string]any{"id": x.ID, "name": x.Name, "os": "Linux", "status": "online", "busy": false, "ephemeral": x.Ephemeral})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"total_count": len(list), "runners": list})
}

type xmlKey struct {
	Modulus  string `xml:"Modulus"`
	Exponent string `xml:"Exponent"`
}

func parsePublicKey(mod, exp string) (*rsa.PublicKey, error) {
	n, err1 := base64.StdEncoding.DecodeString(mod)
	e, err2 := base64.StdEncoding.DecodeString(exp)
	if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 {
		return nil, fmt.Errorf("bad public key encoding")
	}
	k := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if k.N.BitLen() < 2048 {
		return nil, fmt.Errorf("key of %d bits is too small", k.N.BitLen())
	}
	return k, nil
}

func labelNames(raw []map[string]any) []string {
	var out []string
	for _, l := range raw {
		for k, v := range l {
			if strings.EqualFold(k, "name") {
				if s, ok := v.(string); ok {
					out = append(out, s)
				}
			}
		}
	}
	return out
}

func (f *Runners) registerRunnerAdmin(w http.ResponseWriter, r *http.Request) {
	if !f.validRegToken(remoteAuth(r), "register") {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	var req struct {
		URL       string           `json:"url"`
		GroupID   int64            `json:"group_id"`
		Name      string           `json:"name"`
		Ephemeral bool             `json:"ephemeral"`
		Labels    []map[string]any `json:"labels"`
		PublicKey string           `json:"public_key"`
		RunnerID  int64            `json:"runner_id"`
		Replace   bool             `json:"replace"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Name == "" || req.GroupID == 0 {
		ghError(w, http.StatusUnprocessableEntity, "Invalid request")
		return
	}
	var xk xmlKey
	if err := xml.Unmarshal([]byte(req.PublicKey), &xk); err != nil {
		ghError(w, http.StatusUnprocessableEntity, "public_key is not an RSAKeyValue")
		return
	}
	pub, err := parsePublicKey(xk.Modulus, xk.Exponent)
	if err != nil {
		ghError(w, http.StatusUnprocessableEntity, "public_key: "+err.Error())
		return
	}
	f.mu.Lock()
	for _, x := range f.runners {
		if x.Name == req.Name && !x.Deleted {
			if req.Replace && req.RunnerID == x.ID {
				f.dropRunner(x)
				continue
			}
			f.mu.Unlock()
			ghError(w, http.StatusConflict, "A runner with the name already exists")
			return
		}
	}
	run := f.newRunner(req.Name, nil, req.Ephemeral, pub, "runner-admin")
	run.Labels = labelNames(req.Labels)
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"id": run.ID, "name": run.Name, "authorization": map[string]string{
		"authorization_url": f.authURL(), "server_url": f.URL + "/broker/", "client_id": run.ClientID}})
}

func (f *Runners) deleteRunner(w http.ResponseWriter, r *http.Request) {
	if !f.validRegToken(remoteAuth(r), "remove") && bearer(r) != f.AdminToken {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return
	}
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	f.mu.Lock()
	run, ok := f.runners[id]
	if ok && !run.Deleted {
		f.dropRunner(run)
	}
	f.mu.Unlock()
	if !ok {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *Runners) tenantAuth(w http.ResponseWriter, r *http.Request) bool {
	if bearer(r) != f.tenantToken {
		ghError(w, http.StatusUnauthorized, "Bad credentials")
		return false
	}
	return true
}

func (f *Runners) connectionData(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"instanceId": "00000000-0000-0000-0000-000000000001",
		"locationServiceData": map[string]any{"serviceDefinitions": []map[string]any{
			{"identifier": "a8c47e17-4d56-4a56-92bb-de7ea7dc65be", "relativeToSetting": 3, "routeTemplate": "_apis/distributedtask/pools/{poolId}"},
			{"identifier": "e298ef32-5878-4cab-993c-043836571f42", "relativeToSetting": 3, "routeTemplate": "_apis/distributedtask/pools/{poolId}/agents/{agentId}"},
		}}})
}

func (f *Runners) pools(w http.ResponseWriter, r *http.Request) {
	if !f.tenantAuth(w, r) {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": 2, "value": []map[string]any{
		{"id": 2, "name": "Azure Pipelines", "isHosted": true},
		{"id": 1, "name": "Default", "isHosted": false},
	}})
}

func (f *Runners) addAgent(w http.ResponseWriter, r *http.Request) {
	if !f.tenantAuth(w, r) {
		return
	}
	var req struct {
		Name          string           `json:"name"`
		Ephemeral     bool             `json:"ephemeral"`
		Labels        []map[string]any `json:"labels"`
		Authorization struct {
			PublicKey struct {
				Exponent string `json:"exponent"`
				Modulus  string `json:"modulus"`
			} `json:"publicKey"`
		} `json:"authorization"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Name == "" {
		ghError(w, http.StatusBadRequest, "Invalid agent")
		return
	}
	pub, err := parsePublicKey(req.Authorization.PublicKey.Modulus, req.Authorization.PublicKey.Exponent)
	if err != nil {
		ghError(w, http.StatusBadRequest, "publicKey: "+err.Error())
		return
	}
	f.mu.Lock()
	run := f.newRunner(req.Name, nil, req.Ephemeral, pub, "agents")
	run.Labels = labelNames(req.Labels)
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"id": run.ID, "name": run.Name, "version": "2.330.0",
		"authorization": map[string]any{"authorizationUrl": f.authURL(), "clientId": run.ClientID},
		"properties": map[string]any{
			"ServerUrlV2":             map[string]any{"$type": "System.String", "$value": f.URL + "/broker/"},
			"UseV2Flow":               map[string]any{"$type": "System.Boolean", "$value": true},
			"RequireFipsCryptography": map[string]any{"$type": "System.Boolean", "$value": run.FIPS},
		}})
}

func (f *Runners) deleteAgent(w http.ResponseWriter, r *http.Request) {
	if !f.tenantAuth(w, r) {
		return
	}
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	f.mu.Lock()
	run, ok := f.runners[id]
	if ok {
		f.dropRunner(run)
	}
	f.mu.Unlock()
	if !ok {
		ghError(w, http.StatusNotFound, "agent not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// token is the OAuth token service: the client assertion is verified with
// the runner's public key.
func (f *Runners) token(w http.ResponseWriter, r *http.Request) {
	oauthErr := func(code int, e, desc string) {
		writeJSON(w, code, map[string]string{"error": e, "error_description": desc})
	}
	if err := r.ParseForm(); err != nil {
		oauthErr(http.StatusBadRequest, "invalid_request", "unreadable form")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" ||
		r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		oauthErr(http.StatusBadRequest, "invalid_request", "grant_type or client_assertion_type")
		return
	}
	raw := r.PostForm.Get("client_assertion")
	var run *Runner
	tok, err := jwt.Parse(raw, func(t *jwt.Token) (any, error) {
		iss, _ := t.Claims.GetIssuer()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, x := range f.runners {
			if x.ClientID == iss {
				run = x
				if x.FIPS && t.Method.Alg() != "PS256" {
					return nil, fmt.Errorf("this runner requires FIPS cryptography: PS256, not %s", t.Method.Alg())
				}
				return x.Key, nil
			}
		}
		return nil, fmt.Errorf("unknown client %q", iss)
	}, jwt.WithValidMethods([]string{"RS256", "PS256"}), jwt.WithExpirationRequired(), jwt.WithLeeway(30*time.Second))
	if run != nil {
		f.mu.Lock()
		deleted := run.Deleted
		f.mu.Unlock()
		if deleted {
			oauthErr(http.StatusBadRequest, "invalid_client", "Registration was not found or is not valid.")
			return
		}
	}
	if err != nil {
		f.violation("client assertion refused: %v", err)
		oauthErr(http.StatusUnauthorized, "invalid_client", "assertion refused")
		return
	}
	claims := tok.Claims.(jwt.MapClaims)
	sub, _ := claims.GetSubject()
	aud, _ := claims["aud"].(string)
	jti, _ := claims["jti"].(string)
	exp, _ := claims.GetExpirationTime()
	nbf, _ := claims.GetNotBefore()
	switch {
	case sub != run.ClientID:
		f.violation("assertion sub %q is not the client id", sub)
	case aud != f.authURL():
		f.violation("assertion aud %q is not the authorization URL %q", aud, f.authURL())
	case jti == "":
		f.violation("assertion without jti")
	case exp == nil || nbf == nil || exp.Sub(nbf.Time) > 5*time.Minute+time.Second:
		f.violation("assertion life is not at most 5 minutes")
	default:
		t := "rt_" + randToken()[4:]
		f.mu.Lock()
		f.oauth[t] = run.ID
		f.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"access_token": t, "token_type": "JWT", "expires_in": 3600})
		return
	}
	oauthErr(http.StatusUnauthorized, "invalid_client", "assertion claims refused")
}

// Tokens the fake issued to runners, for leak checks.
func (f *Runners) OAuthTokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for t := range f.oauth {
		out = append(out, t)
	}
	return out
}

// RevokeOAuthTokens invalidates every runner token (the next call answers
// 401 and the client must exchange a new one).
func (f *Runners) RevokeOAuthTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.oauth = map[string]int64{}
}

// runnerOf authenticates a runner OAuth token.
func (f *Runners) runnerOf(w http.ResponseWriter, r *http.Request) *Runner {
	f.mu.Lock()
	id, ok := f.oauth[bearer(r)]
	run := f.runners[id]
	f.mu.Unlock()
	if !ok || run == nil {
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	}
	if run.Deleted {
		brokerError(w, http.StatusNotFound, "RunnerNotFound", "runner not found")
		return nil
	}
	return run
}
