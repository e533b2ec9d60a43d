package fleet_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hashicorp/vault/api"

	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/fleet"
	"github.com/airlock-ci/airlock/secrets/vault"
)

// peerRecorder collects the peer events a host records in its trail.
type peerRecorder struct {
	mu  sync.Mutex
	evs []secrets.Event
}

func (r *peerRecorder) sink(_ context.Context, e secrets.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, e)
	return nil
}

func (r *peerRecorder) all() []secrets.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]secrets.Event(nil), r.evs...)
}

// tokenLive asks Vault whether a token still works (lookup-self).
func tokenLive(t *testing.T, addr, token string) bool {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	_, err = c.Auth().Token().LookupSelf()
	return err == nil
}

func TestPeerRevokesDeadHostsVaultTokensFake(t *testing.T) {
	fv := fakevault.New(t)
	testPeerRevocation(t, fv.URL, fv.RootToken)
}

func TestPeerRevokesDeadHostsVaultTokensRealVault(t *testing.T) {
	rv := fakevault.RequireVault(t)
	testPeerRevocation(t, rv.URL, rv.RootToken)
}

// Environment of the host child (see TestMain).
const (
	envChildDir    = "AIRLOCK_FLEET_CHILD_DIR"
	envChildEtcd   = "AIRLOCK_FLEET_CHILD_ETCD"
	envChildPrefix = "AIRLOCK_FLEET_CHILD_PREFIX"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envChildDir); dir != "" {
		os.Exit(hostChild(dir, strings.Split(os.Getenv(envChildEtcd), ","), os.Getenv(envChildPrefix)))
	}
	os.Exit(m.Run())
}

// hostChild is host "a" as its own process: it registers, mints two
// Vault child tokens for job-1, prints them and waits to be killed.
func hostChild(dir string, endpoints []string, prefix string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "child:", err); return 2 }
	ctx := context.Background()
	st, err := secrets.Open(dir, secrets.OpenOptions{Shared: true})
	if err != nil {
		return fail(err)
	}
	fs, err := fleet.Open(ctx, fleet.Config{Endpoints: endpoints, Prefix: prefix, Heartbeat: 2 * time.Second}, "a", nil)
	if err != nil {
		return fail(err)
	}
	if err := st.UseRemote(ctx, fs, fs); err != nil {
		return fail(err)
	}
	br, err := secrets.NewBroker(secrets.BrokerOptions{Store: st, Backends: map[string]secrets.Backend{secrets.BackendVault: vault.New(0)}})
	if err != nil {
		return fail(err)
	}
	if _, err := fs.StartPeers(ctx, func(ctx context.Context, peer string, l secrets.MirroredLease) error {
		return br.RevokePeer(ctx, peer, l, nil)
	}); err != nil {
		return fail(err)
	}
	id := secrets.JobIdentity{JobID: "job-1", Repo: "acme/app", Ref: "main", Source: job.SourceLocal}
	creds, err := br.Prepare(ctx, id, []job.SecretRequest{{Name: "vt"}, {Name: "vt", Var: "SECOND"}})
	if err != nil {
		return fail(err)
	}
	for _, d := range creds.Creds {
		fmt.Println("TOKEN", string(d.Value)) // a loopback dev Vault's test token
	}
	fmt.Println("READY")
	select {}
}

// testPeerRevocation: host a (a separate process) mints Vault child
// tokens for a job and is killed; its registration lease expires; one of
// b and c is elected, revokes the tokens, records peer_revoked and marks
// them done; a's state dir, recovered, neither revokes nor reports them
// again.
func testPeerRevocation(t *testing.T, addr, root string) {
	f := newFleet(t)
	b, c := f.host("b", nil), f.host("c", nil)
	if err := b.st.PutSecret(secrets.Secret{Name: "vt", Backend: secrets.BackendVault, Value: []byte(root),
		Params: map[string]string{vault.ParamAddress: addr}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.st.AddGrant(secrets.Grant{Secret: "vt", Repo: "acme/*", Delivery: job.DeliverEnv,
		Scope: map[string]string{vault.ScopePolicies: "default"}}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	recs := map[string]*peerRecorder{}
	for _, h := range []*host{b, c} {
		br, err := secrets.NewBroker(secrets.BrokerOptions{Store: h.st, Backends: map[string]secrets.Backend{secrets.BackendVault: vault.New(0)}})
		if err != nil {
			t.Fatal(err)
		}
		rec := &peerRecorder{}
		p, err := h.fs.StartPeers(ctx, func(ctx context.Context, peer string, l secrets.MirroredLease) error {
			return br.RevokePeer(ctx, peer, l, rec.sink)
		})
		if err != nil {
			t.Fatal(err)
		}
		recs[h.name] = rec
		t.Cleanup(func() { _ = p.Stop() })
	}

	adir := filepath.Join(t.TempDir(), "a")
	if err := os.MkdirAll(adir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(adir, secrets.KeyFile), f.key, 0o600); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChildDir+"="+adir, envChildEtcd+"="+strings.Join(f.cluster.Endpoints(), ","), envChildPrefix+"="+f.prefix)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var tokens []string
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "READY" {
		if tok, ok := strings.CutPrefix(sc.Text(), "TOKEN "); ok {
			tokens = append(tokens, tok)
		}
	}
	if len(tokens) != 2 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("host a did not mint its tokens: %s", stderr.String())
	}
	for _, tok := range tokens {
		if !tokenLive(t, addr, tok) {
			t.Fatalf("a minted token is not live")
		}
	}
	// The secret another host still needs to revoke with stays.
	if err := b.st.DeleteSecret("vt"); err == nil || !strings.Contains(err.Error(), "not revoked yet") {
		t.Errorf("DeleteSecret while host a holds leases of it = %v, want a refusal", err)
	}
	// a dies: no deregistration, no revocation; its lease runs out.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, tok := range tokens {
		eventually(t, "a peer to revoke the dead host's token", func() bool { return !tokenLive(t, addr, tok) })
	}
	eventually(t, "the peer_revoked records", func() bool { return len(recs["b"].all())+len(recs["c"].all()) == len(tokens) })
	elected := ""
	for _, name := range []string{"b", "c"} {
		for _, e := range recs[name].all() {
			if e.Type != secrets.EventPeerRevoked || e.Peer != "a" || e.JobID != "job-1" {
				t.Errorf("%s recorded %+v, want peer_revoked of a's job-1", name, e)
			}
			if elected != "" && elected != name {
				t.Errorf("both b and c revoked for a; one must be elected")
			}
			elected = name
		}
	}
	// Each revocation is recorded, then marked done and removed.
	eventually(t, "a's mirrored journal to be marked done", func() bool {
		resp, err := b.fs.Client().Get(ctx, f.prefix+"journal/a/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	})

	// a comes back on the same state dir: recovery finds the work done.
	st, err := secrets.Open(adir, secrets.OpenOptions{Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fleet.Open(ctx, fleet.Config{Endpoints: f.cluster.Endpoints(), Prefix: f.prefix}, "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	if err := st.UseRemote(ctx, fs, fs); err != nil {
		t.Fatal(err)
	}
	cb := &countingBackend{Backend: vault.New(0)}
	rec := &peerRecorder{}
	br, err := secrets.NewBroker(secrets.BrokerOptions{Store: st, Backends: map[string]secrets.Backend{secrets.BackendVault: cb},
		PeerDone: fs.PeerDone, Events: rec.sink})
	if err != nil {
		t.Fatal(err)
	}
	recovered, err := br.Recover(ctx)
	if err != nil || len(recovered) != 1 {
		t.Fatalf("Recover on the returning host = %v, %v; want job-1", recovered, err)
	}
	if n := cb.count(); n != 0 {
		t.Errorf("the returning host revoked %d credentials a peer had revoked", n)
	}
	for _, e := range rec.all() {
		if e.Type == secrets.EventRevoked || e.Type == secrets.EventRevokeFailed {
			t.Errorf("the returning host reported %s for a credential a peer revoked", e.Type)
		}
	}
	ls, err := st.Leases("job-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.State != secrets.LeaseRevoked || !strings.Contains(l.LastError, "revoked by peer "+elected) {
			t.Errorf("lease %s on the returning host is %s (%q), want revoked by peer %s", l.ID, l.State, l.LastError, elected)
		}
	}
}
