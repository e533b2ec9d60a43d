package secrets

import (
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Remote kinds: the records a fleet keeps in one place instead of in
// every host's state.db. Secret values in them are sealed by the store
// before they leave the host, exactly as in state.db.
const (
	KindSecrets  = "secrets"
	KindGrants   = "grants"
	KindPolicies = "policies"
	KindMeta     = "meta"
)

// Remote is where a fleet keeps what an admin manages (secrets, grants,
// egress policies) for every host (the etcd store in secrets/fleet).
//
// Contract: Get and List read a local snapshot the implementation keeps
// current, and never block on the network. Commit applies every op or
// none (a transaction) and returns only once the change is committed;
// an op whose MustExist or Require keys are missing fails the whole
// commit with an error wrapping ErrNotFound. Fresh says whether the
// snapshot is recent enough to decide grants with (nil), or how stale
// it is. All methods are safe for concurrent use.
type Remote interface {
	Get(kind, key string) ([]byte, bool)
	List(kind string) []KV
	Commit(ctx context.Context, ops ...RemoteOp) error
	Fresh() error
}

// Syncer is implemented by a Remote whose snapshot can be brought up to
// the store's current revision on demand: a write validated against the
// snapshot (a grant naming a secret another host has just created) asks
// for it before calling a record missing.
type Syncer interface {
	Sync(ctx context.Context) error
}

// KV is one record of a Remote.
type KV struct {
	Key   string
	Value []byte
}

// RemoteOp puts (Value non-nil) or deletes one record.
type RemoteOp struct {
	Kind, Key string
	Value     []byte
	// What names the record in a not-found error ("grant \"x1\"").
	What string
	// MustExist fails the commit unless the record exists.
	MustExist bool
	// Require lists records that must exist for the commit (a grant's
	// secret), as kind and key.
	Require [][2]string
}

// FleetLeaseCounter is implemented by a Remote that also sees every
// host's mirrored journal: a secret still needed to revoke a lease on
// any host is not deleted.
type FleetLeaseCounter interface {
	LiveLeasesOf(ctx context.Context, secret string) (int, error)
}

// JournalMirror copies this host's revocation journal somewhere its
// peers can read it, so that they can revoke its credentials if it dies.
// Mirrored leases carry the sealed handle (never a value); a lease in a
// final state is removed. MirrorLeases returns once the copy is durable.
type JournalMirror interface {
	MirrorLeases(ctx context.Context, leases []MirroredLease) error
}

// MirroredLease is one journal entry as a peer sees it.
type MirroredLease struct {
	JobID       string     `json:"job"`
	LeaseID     string     `json:"lease"`
	GrantID     string     `json:"grant"`
	Secret      string     `json:"secret"`
	Backend     string     `json:"backend"`
	State       LeaseState `json:"state"`
	Handle      []byte     `json:"handle,omitempty"` // sealed under the fleet's key
	Fingerprint string     `json:"fingerprint,omitempty"`
	Expires     time.Time  `json:"expires,omitzero"`
	Updated     time.Time  `json:"updated"`
}

// Final reports whether the lease needs no more revocation.
func (m *MirroredLease) Final() bool { return m.State.final() }

func mirrored(l *leaseRecord) MirroredLease {
	return MirroredLease{JobID: l.JobID, LeaseID: l.ID, GrantID: l.GrantID, Secret: l.Secret, Backend: l.Backend,
		State: l.State, Handle: l.Handle, Fingerprint: l.Fingerprint, Expires: l.Expires, Updated: l.Updated}
}

// UseRemote makes the store keep secrets, grants and policies on r (the
// lease journal and job records stay in state.db) and, with m, mirror
// the journal. It checks that this host's key is the fleet's: the first
// host records a key check, every other one must open it.
func (s *Store) UseRemote(ctx context.Context, r Remote, m JournalMirror) error {
	key := []byte("keycheck")
	if v, ok := r.Get(KindMeta, string(key)); ok {
		if _, err := s.open(bucketMeta, key, v); err != nil {
			return fmt.Errorf("this host's %s is not the fleet's sealing key (the fleet's key check does not open with it): copy the key every other host uses", s.dirKeyPath())
		}
	} else {
		sealed, err := s.seal(bucketMeta, key, []byte("airlock fleet key check"))
		if err != nil {
			return err
		}
		if err := r.Commit(ctx, RemoteOp{Kind: KindMeta, Key: string(key), Value: sealed}); err != nil {
			return fmt.Errorf("recording the fleet key check: %w", err)
		}
	}
	s.remote, s.mirror = r, m
	return nil
}

func (s *Store) dirKeyPath() string { return s.dir + "/" + KeyFile }

// record is one record op against state.db or the remote.
type record = RemoteOp

func kindBucket(kind string) []byte {
	switch kind {
	case KindSecrets:
		return bucketSecrets
	case KindGrants:
		return bucketGrants
	case KindPolicies:
		return bucketPolicies
	}
	return bucketMeta
}

// getRecord returns one record (nil when there is none).
func (s *Store) getRecord(kind, key string) ([]byte, error) {
	if s.remote != nil {
		v, _ := s.remote.Get(kind, key)
		return v, nil
	}
	var out []byte
	err := s.view(func(tx *bolt.Tx) error {
		b, err := bucket(tx, kindBucket(kind))
		if err != nil {
			return err
		}
		if v := b.Get([]byte(key)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// listRecords calls fn for every record of kind, in key order.
func (s *Store) listRecords(kind string, fn func(k, v []byte) error) error {
	if s.remote != nil {
		for _, kv := range s.remote.List(kind) {
			if err := fn([]byte(kv.Key), kv.Value); err != nil {
				return err
			}
		}
		return nil
	}
	return s.view(func(tx *bolt.Tx) error { return forEach(tx, kindBucket(kind), fn) })
}

// commit applies ops all at once.
func (s *Store) commit(ops ...record) error {
	if s.remote != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return s.remote.Commit(ctx, ops...)
	}
	return s.update(func(tx *bolt.Tx) error {
		for _, op := range ops {
			b, err := bucket(tx, kindBucket(op.Kind))
			if err != nil {
				return err
			}
			if op.MustExist && b.Get([]byte(op.Key)) == nil {
				return fmt.Errorf("%s: %w", op.What, ErrNotFound)
			}
			for _, r := range op.Require {
				rb, err := bucket(tx, kindBucket(r[0]))
				if err != nil {
					return err
				}
				if rb.Get([]byte(r[1])) == nil {
					return fmt.Errorf("%s: %s %q: %w", op.What, r[0], r[1], ErrNotFound)
				}
			}
			if op.Value == nil {
				err = b.Delete([]byte(op.Key))
			} else {
				err = b.Put([]byte(op.Key), op.Value)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// mirrorLeases copies journal entries to the fleet. A failure matters
// only while a lease may still be live: then the caller must not hand
// the credential out (a dead host's peers could not revoke it).
func (s *Store) mirrorLeases(ls []*leaseRecord) error {
	if s.mirror == nil || len(ls) == 0 {
		return nil
	}
	out := make([]MirroredLease, len(ls))
	live := false
	for i, l := range ls {
		out[i] = mirrored(l)
		live = live || !l.State.final()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.mirror.MirrorLeases(ctx, out)
	if err != nil && live {
		return fmt.Errorf("mirroring the revocation journal to the fleet store: %w", err)
	}
	return nil
}

// OpenMirroredHandle opens the sealed handle of a peer's journal entry
// (the fleet shares the sealing key).
func (s *Store) OpenMirroredHandle(m MirroredLease) (string, error) {
	l := leaseRecord{ID: m.LeaseID, JobID: m.JobID, Handle: m.Handle}
	return s.openHandle(&l)
}

// ErrStale is returned (wrapped) when the fleet snapshot is older than
// its staleness bound: jobs that need a grant are refused.
var ErrStale = errors.New("fleet store is stale")

// KindAuditKeys holds each host's audit trail verifier key (fleet mode).
const KindAuditKeys = "auditkeys"

// PutAuditKey registers host's audit verifier key with the fleet, so
// that `airlock audit verify` on any host verifies that host's trails.
func (s *Store) PutAuditKey(host, verifierKey string) error {
	if s.remote == nil {
		return errors.New("registering an audit key: only a fleet store ([store] backend = \"etcd\") holds other hosts' keys")
	}
	if err := s.commit(record{Kind: KindAuditKeys, Key: host, Value: []byte(verifierKey)}); err != nil {
		return fmt.Errorf("registering the audit key of %s: %w", host, err)
	}
	return nil
}

// AuditKeys returns the registered audit verifier keys by host (none
// outside fleet mode).
func (s *Store) AuditKeys() map[string]string {
	out := map[string]string{}
	if s.remote == nil {
		return out
	}
	for _, kv := range s.remote.List(KindAuditKeys) {
		out[kv.Key] = string(kv.Value)
	}
	return out
}
