package secrets_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/githubapp"
	"github.com/airlock-ci/airlock/secrets/vault"
)

const staticValue = "static-value-0001-canary"

// world is a store with one secret per backend, their fakes and a broker.
type world struct {
	dir    string
	st     *secrets.Store
	fv     *fakevault.Server
	fg     *fakegithub.App
	broker *secrets.Broker
	events *recorder
}

type recorder struct {
	mu   sync.Mutex
	evs  []secrets.Event
	fail error
}

func (r *recorder) sink(_ context.Context, e secrets.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.evs = append(r.evs, e)
	return nil
}

func (r *recorder) all() []secrets.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]secrets.Event(nil), r.evs...)
}

func (r *recorder) count(typ secrets.EventType) int {
	n := 0
	for _, e := range r.all() {
		if e.Type == typ {
			n++
		}
	}
	return n
}

func backends() map[string]secrets.Backend {
	return map[string]secrets.Backend{
		secrets.BackendVault:     vault.New(5 * time.Second),
		secrets.BackendGitHubApp: githubapp.New(nil),
	}
}

// seed stores the secrets of the world (pointing at the fakes) and grants
// all of them to acme/** except those named in ungranted.
func seed(t testing.TB, st *secrets.Store, fv *fakevault.Server, fg *fakegithub.App, ungranted ...string) {
	t.Helper()
	fv.AddDynamic("database/creds/ci", map[string]any{"password": "dyn-password-canary"}, time.Hour)
	secs := []secrets.Secret{
		{Name: "static", Backend: secrets.BackendBuiltin, Value: []byte(staticValue)},
		{Name: "vtok", Backend: secrets.BackendVault, Value: []byte(fv.RootToken), Params: map[string]string{vault.ParamAddress: fv.URL}},
		{Name: "vdyn", Backend: secrets.BackendVault, Value: []byte(fv.RootToken), Params: map[string]string{
			vault.ParamAddress: fv.URL, vault.ParamMode: vault.ModeDynamic, vault.ParamPath: "database/creds/ci", vault.ParamField: "password"}},
		{Name: "gh", Backend: secrets.BackendGitHubApp, Value: fg.KeyPEM, Params: map[string]string{
			githubapp.ParamAppID: strconv.FormatInt(fg.AppID, 10), githubapp.ParamInstallationID: "100", githubapp.ParamAPIURL: fg.URL}},
	}
	grants := map[string]secrets.Grant{
		"static": {Delivery: job.DeliverProxy, Hosts: []string{"api.allowed.test"}},
		"vtok":   {Delivery: job.DeliverEnv, Scope: map[string]string{vault.ScopePolicies: "deploy"}, TTL: 10 * time.Minute},
		"vdyn":   {Delivery: job.DeliverFile, Var: "DB_PASSWORD_FILE"},
		"gh":     {Delivery: job.DeliverEnv, Scope: map[string]string{"contents": "read"}},
	}
	var gs []secrets.Grant
	for _, s := range secs {
		if err := st.PutSecret(s); err != nil {
			t.Fatal(err)
		}
		skip := false
		for _, u := range ungranted {
			skip = skip || u == s.Name
		}
		if skip {
			continue
		}
		g := grants[s.Name]
		g.Secret, g.Repo, g.Refs = s.Name, "acme/**", []string{"main"}
		gs = append(gs, g)
	}
	if _, err := st.PutGrants(gs); err != nil {
		t.Fatal(err)
	}
}

func newWorld(t *testing.T, ungranted ...string) *world {
	t.Helper()
	w := &world{dir: stateDir(t), fv: fakevault.New(t), fg: fakegithub.New(t), events: &recorder{}}
	w.st = openStore(t, w.dir)
	seed(t, w.st, w.fv, w.fg, ungranted...)
	b, err := secrets.NewBroker(secrets.BrokerOptions{Store: w.st, Backends: backends(), Events: w.events.sink,
		RevokeAttempts: 2, RevokeBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w.broker = b
	return w
}

func identity(id string) secrets.JobIdentity {
	return secrets.JobIdentity{JobID: id, Repo: "acme/widgets", Ref: "main", Source: job.SourceGitHub, Timeout: 10 * time.Minute}
}

func requests(names ...string) []job.SecretRequest {
	var out []job.SecretRequest
	for _, n := range names {
		out = append(out, job.SecretRequest{Name: n})
	}
	return out
}

// noLive fails the test if any fake still holds a live credential.
func (w *world) noLive(t *testing.T) {
	t.Helper()
	if n := len(w.fv.LiveChildTokens()); n != 0 {
		t.Errorf("vault: %d child tokens still live", n)
	}
	if n := len(w.fv.LiveLeases()); n != 0 {
		t.Errorf("vault: %d leases still live", n)
	}
	if n := len(w.fg.LiveTokens()); n != 0 {
		t.Errorf("github: %d installation tokens still live", n)
	}
}

func TestBrokerUngrantedFailsBeforeAnyMint(t *testing.T) {
	w := newWorld(t, "gh")
	_, err := w.broker.Prepare(context.Background(), identity("job-1"), requests("vtok", "vdyn", "gh"))
	var refused *secrets.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("Prepare = %v, want a *RefusedError", err)
	}
	for _, want := range []string{`secret "gh"`, `repo "acme/widgets"`, `ref "main"`, "airlock grant add gh --repo acme/widgets --ref main --source github --deliver env"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Prepare error %q does not contain %q", err, want)
		}
	}
	if n := w.fv.Requests("POST /v1/auth/token/create"); n != 0 {
		t.Errorf("vault saw %d token creates, want 0", n)
	}
	if n := w.fv.Requests("GET /v1/database/creds/ci"); n != 0 {
		t.Errorf("vault saw %d dynamic reads, want 0", n)
	}
	if n := w.fg.Mints(); n != 0 {
		t.Errorf("github minted %d tokens, want 0", n)
	}
	if ls, err := w.st.Leases(""); err != nil || len(ls) != 0 {
		t.Errorf("journal holds %d leases (%v), want 0", len(ls), err)
	}
	if n := w.events.count(secrets.EventGrantDecision); n != 3 {
		t.Errorf("%d grant decision events, want 3", n)
	}
}

func TestBrokerPrepareDeliversAndReleaseRevokesEverything(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	creds, err := w.broker.Prepare(ctx, identity("job-2"), requests("static", "vtok", "vdyn", "gh"))
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	by := map[string]secrets.Delivered{}
	for _, d := range creds.Creds {
		by[d.Secret] = d
	}
	if d := by["static"]; d.Delivery != job.DeliverProxy || !strings.HasPrefix(string(d.Value), secrets.SurrogatePrefix) ||
		len(d.Value) != len(secrets.SurrogatePrefix)+32 || string(d.Real) != staticValue || d.Hosts[0] != "api.allowed.test" {
		t.Errorf("static delivered as %s value %q real %q hosts %v; want a surrogate for proxy", d.Delivery, d.Value, d.Real, d.Hosts)
	}
	if name, val := func() (string, string) { d := by["static"]; return d.HeaderLine() }(); name != "Authorization" || val != "Bearer "+staticValue {
		t.Errorf("HeaderLine() = %q, %q", name, val)
	}
	if d := by["vtok"]; d.Var != "VTOK" || !strings.HasPrefix(string(d.Value), "hvs.") || d.Real != nil {
		t.Errorf("vtok delivered in %s as %q", d.Var, d.Value)
	}
	if d := by["vdyn"]; d.Var != "DB_PASSWORD_FILE" || string(d.Value) != "dyn-password-canary" || d.Delivery != job.DeliverFile {
		t.Errorf("vdyn delivered in %s by %s as %q", d.Var, d.Delivery, d.Value)
	}
	if d := by["gh"]; !strings.HasPrefix(string(d.Value), "ghs_") {
		t.Errorf("gh delivered as %q", d.Value)
	}
	if n := len(creds.MaskValues()); n != 5 {
		t.Errorf("MaskValues() has %d values, want 5 (4 values + 1 surrogate)", n)
	}
	if len(w.fv.LiveChildTokens()) != 1 || len(w.fv.LiveLeases()) != 1 || len(w.fg.LiveTokens()) != 1 {
		t.Fatalf("after Prepare: %d vault tokens, %d leases, %d github tokens live; want 1 each",
			len(w.fv.LiveChildTokens()), len(w.fv.LiveLeases()), len(w.fg.LiveTokens()))
	}
	if tok := w.fv.LiveChildTokens()[0]; tok.TTL != 10*time.Minute || tok.ExplicitMaxTTL != 15*time.Minute {
		t.Errorf("vault token ttl %s max %s, want the grant's 10m and timeout+slack 15m", tok.TTL, tok.ExplicitMaxTTL)
	}

	if err := w.broker.Release(ctx, "job-2"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	w.noLive(t)
	leases, err := w.st.Leases("job-2")
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 4 {
		t.Fatalf("journal holds %d leases, want 4", len(leases))
	}
	for _, l := range leases {
		if l.State != secrets.LeaseRevoked || l.Fingerprint == "" {
			t.Errorf("lease %s of %s: state %s fingerprint %q, want revoked with a fingerprint", l.ID, l.Secret, l.State, l.Fingerprint)
		}
	}
	if jr, err := w.st.Job("job-2"); err != nil || jr.State != secrets.JobFinished {
		t.Errorf("job record = %+v, %v; want finished", jr, err)
	}
	if err := w.broker.Release(ctx, "job-2"); err != nil {
		t.Errorf("second Release = %v, want nil", err)
	}
	if n, m := w.events.count(secrets.EventMinted), w.events.count(secrets.EventRevoked); n != 4 || m != 4 {
		t.Errorf("%d minted and %d revoked events, want 4 and 4", n, m)
	}
	// No value in any event, nor in the state file.
	evText := fmt.Sprintf("%+v", w.events.all())
	for _, v := range creds.MaskValues() {
		if strings.Contains(evText, string(v)) {
			t.Errorf("an event contains a credential value")
		}
	}
	creds.Wipe()
	for _, d := range creds.Creds {
		if strings.Trim(string(d.Value), "\x00") != "" {
			t.Errorf("Wipe left %s's value", d.Secret)
		}
	}
}

func TestBrokerMintFailureRevokesWhatWasMinted(t *testing.T) {
	w := newWorld(t)
	w.fg.AddInstallation(100, "acme", "only-this-repo") // the job's repo is not in the installation: mint fails
	_, err := w.broker.Prepare(context.Background(), identity("job-3"), requests("vtok", "gh", "static"))
	if err == nil || !strings.Contains(err.Error(), "422") {
		t.Fatalf("Prepare = %v, want the github 422", err)
	}
	w.noLive(t)
	if len(w.fv.ChildTokens()) != 1 {
		t.Errorf("vault issued %d tokens, want 1 (then revoked)", len(w.fv.ChildTokens()))
	}
	ls, err := w.st.Leases("job-3")
	if err != nil || len(ls) != 3 {
		t.Fatalf("journal = %+v, %v; want 3 leases", ls, err)
	}
	for _, l := range ls {
		if l.State != secrets.LeaseRevoked {
			t.Errorf("lease of %s is %s, want revoked", l.Secret, l.State)
		}
	}
}

func TestBrokerEventSinkFailureMintsNothing(t *testing.T) {
	w := newWorld(t)
	w.events.fail = errors.New("audit spool full")
	_, err := w.broker.Prepare(context.Background(), identity("job-4"), requests("vtok"))
	if err == nil || !strings.Contains(err.Error(), "audit spool full") {
		t.Fatalf("Prepare = %v, want the sink's error", err)
	}
	if n := w.fv.Requests("POST /v1/auth/token/create"); n != 0 {
		t.Errorf("vault saw %d token creates, want 0", n)
	}
}

func TestBrokerSweeperRetriesFailedRevocations(t *testing.T) {
	tests := []struct {
		name   string
		secret string
		fail   func(w *world, n int)
	}{
		{"vault token", "vtok", func(w *world, n int) { w.fv.FailRevokes(n) }},
		{"github token", "gh", func(w *world, n int) { w.fg.FailDeletes(n) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			ctx := context.Background()
			if _, err := w.broker.Prepare(ctx, identity("job-5"), requests(tc.secret)); err != nil {
				t.Fatal(err)
			}
			tc.fail(w, 5) // Release makes 2 attempts; the sweeper needs 3 more
			if err := w.broker.Release(ctx, "job-5"); err == nil {
				t.Fatal("Release = nil, want the revocation failure")
			}
			ls, err := w.st.Leases("job-5")
			if err != nil || len(ls) != 1 || ls[0].State != secrets.LeaseRevokeFailed {
				t.Fatalf("leases = %+v, %v; want one revoke_failed", ls, err)
			}
			if len(w.fv.LiveChildTokens())+len(w.fg.LiveTokens()) != 1 {
				t.Fatal("the credential should still be live")
			}
			sctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); w.broker.RunSweeper(sctx, 5*time.Millisecond) }()
			deadline := time.Now().Add(10 * time.Second)
			for {
				ls, err = w.st.Leases("job-5")
				if err == nil && ls[0].State == secrets.LeaseRevoked {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("sweeper did not revoke: %+v, %v", ls, err)
				}
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			<-done
			w.noLive(t)
			if ls[0].Attempts != 6 {
				t.Errorf("lease took %d attempts, want 6 (5 failures, then success)", ls[0].Attempts)
			}
			if n := w.events.count(secrets.EventRevokeFailed); n < 2 {
				t.Errorf("%d revoke-failed events, want at least 2", n)
			}
		})
	}
}

func TestBrokerGivesUpAfterExpiry(t *testing.T) {
	w := newWorld(t)
	w.fv.AddDynamic("database/creds/short", map[string]any{"password": "short-lived-password"}, time.Second)
	if err := w.st.PutSecret(secrets.Secret{Name: "short", Backend: secrets.BackendVault, Value: []byte(w.fv.RootToken), Params: map[string]string{
		vault.ParamAddress: w.fv.URL, vault.ParamMode: vault.ModeDynamic, vault.ParamPath: "database/creds/short"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.st.AddGrant(secrets.Grant{Secret: "short", Repo: "acme/*", Delivery: job.DeliverEnv}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := w.broker.Prepare(ctx, identity("job-6"), requests("short")); err != nil {
		t.Fatal(err)
	}
	w.fv.FailRevokes(1000)
	if err := w.broker.Release(ctx, "job-6"); err == nil {
		t.Fatal("Release = nil, want a failure")
	}
	time.Sleep(1100 * time.Millisecond)
	if err := w.broker.Sweep(ctx); err != nil {
		t.Errorf("Sweep after expiry = %v, want nil (given up, evented)", err)
	}
	ls, err := w.st.Leases("job-6")
	if err != nil || ls[0].State != secrets.LeaseExpired {
		t.Errorf("lease = %+v, %v; want expired", ls, err)
	}
	if n := w.events.count(secrets.EventExpired); n != 1 {
		t.Errorf("%d expired events, want 1", n)
	}
}

func TestSecretRmRefusedWhileLeasesLive(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	if _, err := w.broker.Prepare(ctx, identity("job-7"), requests("vtok")); err != nil {
		t.Fatal(err)
	}
	if err := w.st.DeleteSecret("vtok"); err == nil || !strings.Contains(err.Error(), "not revoked yet") {
		t.Errorf("DeleteSecret with a live lease = %v, want a refusal", err)
	}
	if err := w.broker.Release(ctx, "job-7"); err != nil {
		t.Fatal(err)
	}
	if err := w.st.DeleteSecret("vtok"); err != nil {
		t.Errorf("DeleteSecret after release = %v", err)
	}
}

func BenchmarkBrokerBuiltin(b *testing.B) {
	for _, shared := range []bool{false, true} {
		b.Run(map[bool]string{false: "exclusive", true: "shared"}[shared], func(b *testing.B) {
			st, err := secrets.Open(b.TempDir()+"/state", secrets.OpenOptions{Shared: shared})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = st.Close() })
			if err := st.PutSecret(secrets.Secret{Name: "static", Backend: secrets.BackendBuiltin, Value: []byte(staticValue)}); err != nil {
				b.Fatal(err)
			}
			if _, err := st.AddGrant(secrets.Grant{Secret: "static", Repo: "acme/**", Delivery: job.DeliverEnv}); err != nil {
				b.Fatal(err)
			}
			br, err := secrets.NewBroker(secrets.BrokerOptions{Store: st})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			reqs := requests("static")
			for i := 0; b.Loop(); i++ {
				id := identity("bench-" + strconv.Itoa(i))
				if _, err := br.Prepare(ctx, id, reqs); err != nil {
					b.Fatal(err)
				}
				if err := br.Release(ctx, id.JobID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
