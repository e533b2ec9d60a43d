package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/airlock-ci/airlock/internal/testenv/etcdtest"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/fleet"
)

// eventually polls cond until it holds or a generous deadline passes (a
// bound on the test's run time, not an assertion about speed).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// host is one fleet member: its own state dir, the fleet's key, a store
// on the cluster.
type host struct {
	name string
	dir  string
	st   *secrets.Store
	fs   *fleet.Store
}

type fleetEnv struct {
	t       testing.TB
	cluster *etcdtest.Cluster
	key     []byte
	prefix  string
}

func newFleet(t testing.TB) *fleetEnv {
	t.Helper()
	c := etcdtest.Start(t, 3)
	return &fleetEnv{t: t, cluster: c, prefix: fmt.Sprintf("/airlock-test-%d/", time.Now().UnixNano())}
}

// host opens a member; cfg edits the fleet config (nil: defaults with a
// 100ms progress interval).
func (f *fleetEnv) host(name string, cfg func(*fleet.Config)) *host {
	t := f.t
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if f.key != nil {
		if err := os.WriteFile(filepath.Join(dir, secrets.KeyFile), f.key, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, err := secrets.Open(dir, secrets.OpenOptions{Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	if f.key == nil {
		if f.key, err = os.ReadFile(filepath.Join(dir, secrets.KeyFile)); err != nil {
			t.Fatal(err)
		}
	}
	fc := fleet.Config{Endpoints: f.cluster.Endpoints(), Prefix: f.prefix, Progress: 100 * time.Millisecond, Heartbeat: 2 * time.Second}
	if cfg != nil {
		cfg(&fc)
	}
	fs, err := fleet.Open(context.Background(), fc, name, nil)
	if err != nil {
		t.Fatalf("fleet.Open(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	if err := st.UseRemote(context.Background(), fs, fs); err != nil {
		t.Fatalf("UseRemote(%s): %v", name, err)
	}
	return &host{name: name, dir: dir, st: st, fs: fs}
}

func hasGrant(h *host, id string) bool {
	gs, err := h.st.Grants()
	if err != nil {
		return false
	}
	for _, g := range gs {
		if g.ID == id {
			return true
		}
	}
	return false
}

func addSecret(t testing.TB, h *host, name string) {
	t.Helper()
	if err := h.st.PutSecret(secrets.Secret{Name: name, Backend: secrets.BackendBuiltin, Value: []byte("fleet-secret-value-" + name)}); err != nil {
		t.Fatal(err)
	}
}

func TestFleetGrantChangeReachesEveryHost(t *testing.T) {
	f := newFleet(t)
	a, b, c := f.host("a", nil), f.host("b", nil), f.host("c", nil)
	addSecret(t, a, "deploy")
	g, err := a.st.AddGrant(secrets.Grant{Secret: "deploy", Repo: "acme/*", Delivery: job.DeliverEnv})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*host{a, b, c} {
		eventually(t, "grant on "+h.name, func() bool { return hasGrant(h, g.ID) })
		sec, err := h.st.Secret("deploy")
		if err != nil || string(sec.Value) != "fleet-secret-value-deploy" {
			t.Errorf("%s: Secret(deploy) = %q, %v; want the value sealed by a", h.name, sec.Value, err)
		}
	}
	// etcd holds the value sealed, never in clear.
	resp, err := a.fs.Client().Get(context.Background(), f.prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Value), "fleet-secret-value") {
			t.Errorf("etcd key %s holds a secret value in clear", kv.Key)
		}
	}
	// A revocation on one host is in force on the others.
	if err := b.st.DeleteGrant(g.ID); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*host{a, b, c} {
		eventually(t, "grant gone on "+h.name, func() bool { return !hasGrant(h, g.ID) })
	}
	if err := c.st.DeleteGrant(g.ID); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("deleting a deleted grant = %v, want ErrNotFound", err)
	}
	if err := a.st.SetPolicy(secrets.EgressPolicy{RepoPattern: "acme/**", Egress: []string{"registry.test:443"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "policy on c", func() bool {
		p, ok, err := c.st.EgressCeiling("acme/app", "")
		return err == nil && ok && p.RepoPattern == "acme/**"
	})
}

func TestFleetWritesAreAllOrNothing(t *testing.T) {
	f := newFleet(t)
	a, b := f.host("a", nil), f.host("b", nil)
	addSecret(t, a, "present")
	g := func(id, secret string) []byte {
		return []byte(fmt.Sprintf(`{"ID":%q,"Secret":%q,"Repo":"acme/*","Delivery":"env"}`, id, secret))
	}
	err := a.fs.Commit(context.Background(),
		secrets.RemoteOp{Kind: secrets.KindGrants, Key: "g1", Value: g("g1", "present"), What: "grant g1", Require: [][2]string{{secrets.KindSecrets, "present"}}},
		secrets.RemoteOp{Kind: secrets.KindGrants, Key: "g2", Value: g("g2", "absent"), What: "grant g2", Require: [][2]string{{secrets.KindSecrets, "absent"}}},
	)
	if !errors.Is(err, secrets.ErrNotFound) || !strings.Contains(err.Error(), "grant g2") {
		t.Fatalf("Commit with a missing secret = %v, want ErrNotFound naming grant g2", err)
	}
	if hasGrant(a, "g1") || hasGrant(b, "g1") {
		t.Errorf("grant g1 was written although the transaction failed")
	}
	// An import too large for one transaction is refused whole.
	var many []secrets.Grant
	for i := range fleet.MaxTxnOps {
		many = append(many, secrets.Grant{ID: fmt.Sprintf("m%03d", i), Secret: "present", Repo: "acme/*", Delivery: job.DeliverEnv})
	}
	if _, err := a.st.PutGrants(many); err == nil || !strings.Contains(err.Error(), "max-txn-ops") {
		t.Errorf("PutGrants(%d) = %v, want a max-txn-ops refusal", len(many), err)
	}
	if gs, err := b.st.Grants(); err != nil || len(gs) != 0 {
		t.Errorf("Grants on b after refused imports = %d, %v; want none", len(gs), err)
	}
	if _, err := a.st.PutGrants(many[:10]); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ten grants on b", func() bool { gs, _ := b.st.Grants(); return len(gs) == 10 })
}

// A grant made on one host for a secret another host created a moment
// before is accepted: b's snapshot may not have the secret yet, and it
// syncs before calling the secret missing (CI once saw "no secret named").
func TestFleetGrantRightAfterSecretOnAnotherHost(t *testing.T) {
	f := newFleet(t)
	a, b := f.host("a", nil), f.host("b", nil)
	for i := range 20 {
		name := fmt.Sprintf("fresh%02d", i)
		addSecret(t, a, name)
		if _, err := b.st.AddGrant(secrets.Grant{Secret: name, Repo: "acme/*", Delivery: job.DeliverEnv}); err != nil {
			t.Fatalf("AddGrant on b right after the secret was set on a (round %d): %v", i, err)
		}
	}
	// A secret that exists nowhere is still refused, by name.
	_, err := b.st.AddGrant(secrets.Grant{Secret: "nowhere", Repo: "acme/*", Delivery: job.DeliverEnv})
	if err == nil || !strings.Contains(err.Error(), `no secret named "nowhere"`) {
		t.Errorf("AddGrant for a missing secret = %v, want the missing secret named", err)
	}
}

func TestFleetKeepsWorkingWithoutOneMember(t *testing.T) {
	f := newFleet(t)
	a, b := f.host("a", nil), f.host("b", nil)
	addSecret(t, a, "s")
	f.cluster.StopMember(0)
	g, err := b.st.AddGrant(secrets.Grant{Secret: "s", Repo: "acme/*", Delivery: job.DeliverEnv})
	if err != nil {
		t.Fatalf("AddGrant with one member down: %v", err)
	}
	eventually(t, "grant on a with one member down", func() bool { return hasGrant(a, g.ID) })
	for _, h := range []*host{a, b} {
		if err := h.fs.Fresh(); err != nil {
			t.Errorf("%s: Fresh() with two of three members = %v", h.name, err)
		}
	}
}

func TestFleetRefusesGrantsWhenStale(t *testing.T) {
	f := newFleet(t)
	a := f.host("a", func(c *fleet.Config) { c.MaxStaleness = 2 * time.Second })
	addSecret(t, a, "s")
	if _, err := a.st.AddGrant(secrets.Grant{Secret: "s", Repo: "acme/*", Delivery: job.DeliverEnv}); err != nil {
		t.Fatal(err)
	}
	br, err := secrets.NewBroker(secrets.BrokerOptions{Store: a.st})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := secrets.JobIdentity{JobID: "j1", Repo: "acme/app", Ref: "main", Source: job.SourceLocal}
	if _, err := br.Prepare(ctx, id, []job.SecretRequest{{Name: "s"}}); err != nil {
		t.Fatalf("Prepare while fresh: %v", err)
	}
	if err := br.Release(ctx, "j1"); err != nil {
		t.Fatal(err)
	}
	f.cluster.Stop()
	eventually(t, "the snapshot to go stale", func() bool { return errors.Is(a.fs.Fresh(), secrets.ErrStale) })
	id.JobID = "j2"
	_, err = br.Prepare(ctx, id, []job.SecretRequest{{Name: "s"}})
	if !errors.Is(err, secrets.ErrStale) || !strings.Contains(err.Error(), "max_staleness") {
		t.Errorf("Prepare of a job needing a grant while stale = %v, want a max_staleness refusal", err)
	}
	id.JobID = "j3"
	if _, err := br.Prepare(ctx, id, nil); err != nil {
		t.Errorf("Prepare of a job needing no grant while stale = %v, want it to run", err)
	}
	f.cluster.StartAll()
	eventually(t, "fresh again after etcd is back", func() bool { return a.fs.Fresh() == nil })
	id.JobID = "j4"
	if _, err := br.Prepare(ctx, id, []job.SecretRequest{{Name: "s"}}); err != nil {
		t.Errorf("Prepare after etcd is back: %v", err)
	}
}

func TestFleetWatchResumesWithoutMissingAChange(t *testing.T) {
	f := newFleet(t)
	eps := f.cluster.Endpoints()
	a := f.host("a", func(c *fleet.Config) { c.Endpoints = eps[1:] })
	b := f.host("b", func(c *fleet.Config) { c.Endpoints = eps[:1] }) // only member 0
	addSecret(t, a, "s")
	eventually(t, "secret on b", func() bool { _, err := b.st.Secret("s"); return err == nil })
	f.cluster.StopMember(0)
	g, err := a.st.AddGrant(secrets.Grant{Secret: "s", Repo: "acme/*", Delivery: job.DeliverEnv})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.st.DeletePolicy("none", ""); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("DeletePolicy(none) = %v, want ErrNotFound", err)
	}
	before := b.fs.Revision()
	f.cluster.StartMember(0)
	eventually(t, "the grant written while b's member was down", func() bool { return hasGrant(b, g.ID) })
	if b.fs.Revision() <= before {
		t.Errorf("b's revision %d did not move past %d", b.fs.Revision(), before)
	}
}

func TestFleetRefusesAnotherSealingKey(t *testing.T) {
	f := newFleet(t)
	f.host("a", nil)
	f.key = nil // the next host makes a key of its own
	dir := filepath.Join(t.TempDir(), "stranger")
	st, err := secrets.Open(dir, secrets.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	fs, err := fleet.Open(context.Background(), fleet.Config{Endpoints: f.cluster.Endpoints(), Prefix: f.prefix}, "stranger", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	if err := st.UseRemote(context.Background(), fs, fs); err == nil || !strings.Contains(err.Error(), "not the fleet's sealing key") {
		t.Errorf("UseRemote with another key = %v, want a refusal", err)
	}
}

// countingBackend counts revocations around a real backend.
type countingBackend struct {
	secrets.Backend
	mu      sync.Mutex
	revokes int
}

func (c *countingBackend) Revoke(ctx context.Context, req secrets.RevokeRequest) error {
	c.mu.Lock()
	c.revokes++
	c.mu.Unlock()
	return c.Backend.Revoke(ctx, req)
}

func (c *countingBackend) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.revokes
}
