package secrets

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/airlock-ci/airlock/runner/job"
)

// countingBackend is a backend that counts mints and revokes.
type countingBackend struct{ mints, revokes atomic.Int32 }

func (c *countingBackend) Mint(context.Context, MintRequest) (Credential, error) {
	c.mints.Add(1)
	return Credential{Value: []byte("minted-value-123"), Handle: "h"}, nil
}

func (c *countingBackend) Revoke(context.Context, RevokeRequest) error {
	c.revokes.Add(1)
	return nil
}

func TestJournalWriteFailureMintsNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	st, err := Open(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.PutSecret(Secret{Name: "v", Backend: BackendVault, Value: []byte("runner-token-1234")}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddGrant(Grant{Secret: "v", Repo: "acme/*", Delivery: job.DeliverEnv}); err != nil {
		t.Fatal(err)
	}
	// Reopen the database read-only: reads work, every journal write fails.
	if err := st.db.Close(); err != nil {
		t.Fatal(err)
	}
	st.db, err = bolt.Open(filepath.Join(dir, DBFile), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	be := &countingBackend{}
	b, err := NewBroker(BrokerOptions{Store: st, Backends: map[string]Backend{BackendVault: be}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Prepare(context.Background(), JobIdentity{JobID: "j", Repo: "acme/app", Ref: "main"}, []job.SecretRequest{{Name: "v"}})
	if err == nil || !strings.Contains(err.Error(), "nothing minted") {
		t.Fatalf("Prepare with a read-only journal = %v, want a journaling error", err)
	}
	if n := be.mints.Load(); n != 0 {
		t.Errorf("backend minted %d times, want 0", n)
	}
}
