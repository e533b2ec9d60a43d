// Package fleet keeps a fleet's policy on etcd: secrets (sealed by each
// host before they leave it, so etcd never sees a value), grants and
// egress policies, read from a local snapshot that an etcd watch keeps
// current; each host's revocation journal (sealed handles, never values)
// mirrored under its key; host registration with an etcd lease, and peer
// revocation of the credentials of a host whose lease expired.
//
// Key layout under the prefix (default /airlock/):
//
//	secrets/<name> grants/<id> policies/<pattern> meta/keycheck auditkeys/<host>
//	hosts/<host>                     registration, attached to the host's lease
//	journal/<host>/<job>/<lease>     a live credential of that host (sealed handle)
//	done/<host>/<job>/<lease>        revoked by a peer after <host> died
//	locks/peer-revoke/<host>         the mutex the surviving hosts elect one with
package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/airlock-ci/airlock/secrets"
)

// Defaults.
const (
	DefaultPrefix       = "/airlock/"
	DefaultMaxStaleness = 5 * time.Minute
	DefaultHeartbeat    = 10 * time.Second
	// MaxTxnOps is etcd's default --max-txn-ops: the most records one
	// all-or-nothing write (a grant import) may touch.
	MaxTxnOps = 128
)

// Config says how to reach the fleet's etcd.
type Config struct {
	Endpoints []string
	// CertFile and KeyFile are the client certificate; CAFile verifies the
	// servers. With none of them the connection is plain (loopback tests).
	CertFile, KeyFile, CAFile string
	Prefix                    string
	// MaxStaleness bounds how long a host decides grants from a snapshot
	// it could not confirm is current (etcd unreachable).
	MaxStaleness time.Duration
	// Heartbeat is the TTL of the host's registration lease: peers revoke
	// for it once it has not renewed it for this long.
	Heartbeat time.Duration
	// Progress is how often the host asks etcd to confirm its watch is
	// current (default 1s); it bounds how fresh "fresh" is.
	Progress    time.Duration
	DialTimeout time.Duration
}

func (c *Config) defaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.MaxStaleness <= 0 {
		c.MaxStaleness = DefaultMaxStaleness
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Progress <= 0 {
		c.Progress = time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
}

// snapshotted are the kinds kept in the local snapshot.
var snapshotted = map[string]bool{secrets.KindSecrets: true, secrets.KindGrants: true, secrets.KindPolicies: true,
	secrets.KindMeta: true, secrets.KindAuditKeys: true}

// Store is a secrets.Remote on etcd. Open it, hand it to
// secrets.Store.UseRemote, Close it last.
type Store struct {
	cfg  Config
	cli  *clientv3.Client
	log  hclog.Logger
	host string

	mu      sync.Mutex
	cond    *sync.Cond
	data    map[string]map[string][]byte
	rev     int64     // every event up to this revision is in data
	contact time.Time // when etcd last confirmed it
	closed  bool

	cancel context.CancelFunc
	done   chan struct{}
}

// Open connects, loads the snapshot and starts the watch that keeps it
// current. host names this host in the journal mirror and registration.
func Open(ctx context.Context, cfg Config, host string, log hclog.Logger) (*Store, error) {
	cfg.defaults()
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("opening the fleet store: [store] endpoints is empty")
	}
	tlsCfg, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, TLS: tlsCfg,
		Logger: zap.NewNop(), DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("connecting to the fleet store %v: %w", cfg.Endpoints, err)
	}
	s := &Store{cfg: cfg, cli: cli, log: log.Named("fleet"), host: host, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	lctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	err = s.load(lctx)
	cancel()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("loading the fleet store from %v: %w", cfg.Endpoints, err), cli.Close())
	}
	wctx, stop := context.WithCancel(context.Background())
	s.cancel = stop
	go s.run(wctx)
	return s, nil
}

func clientTLS(cfg Config) (*tls.Config, error) {
	if cfg.CertFile == "" && cfg.KeyFile == "" && cfg.CAFile == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CertFile != "" || cfg.KeyFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading the fleet store client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{c}
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the fleet store CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reading the fleet store CA %s: no certificate in it", cfg.CAFile)
		}
		t.RootCAs = pool
	}
	return t, nil
}

// Client is the etcd client (for the peer monitor and tests).
func (s *Store) Client() *clientv3.Client { return s.cli }

// Prefix is the key prefix.
func (s *Store) Prefix() string { return s.cfg.Prefix }

// Host is this host's name.
func (s *Store) Host() string { return s.host }

// load reads every snapshotted record at one revision and takes them
// unless the snapshot is already as new.
func (s *Store) load(ctx context.Context) error {
	data := map[string]map[string][]byte{}
	var rev int64
	for kind := range snapshotted {
		resp, err := s.cli.Get(ctx, s.cfg.Prefix+kind+"/", clientv3.WithPrefix(), clientv3.WithRev(rev))
		if err != nil {
			return err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		m := map[string][]byte{}
		for _, kv := range resp.Kvs {
			m[strings.TrimPrefix(string(kv.Key), s.cfg.Prefix+kind+"/")] = kv.Value
		}
		data[kind] = m
	}
	s.mu.Lock()
	if s.data == nil || rev > s.rev {
		// Older than what the watch has applied meanwhile: keep that.
		s.data, s.rev = data, rev
	}
	s.contact = time.Now()
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// split turns a full key into kind and key; ok is false outside the
// snapshotted kinds.
func (s *Store) split(full string) (kind, key string, ok bool) {
	rest, found := strings.CutPrefix(full, s.cfg.Prefix)
	if !found {
		return "", "", false
	}
	kind, key, found = strings.Cut(rest, "/")
	return kind, key, found && snapshotted[kind]
}

// run keeps the snapshot current: a watch from the snapshot's revision
// (resumed from the last applied revision after any break, reloaded if
// etcd compacted past it) and a progress request every cfg.Progress so
// that an idle watch still proves it is current.
func (s *Store) run(ctx context.Context) {
	defer close(s.done)
	go func() {
		t := time.NewTicker(s.cfg.Progress)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				pctx, cancel := context.WithTimeout(ctx, s.cfg.Progress)
				_ = s.cli.RequestProgress(clientv3.WithRequireLeader(pctx))
				cancel()
			}
		}
	}()
	for ctx.Err() == nil {
		s.mu.Lock()
		from := s.rev + 1
		s.mu.Unlock()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.cli.Watch(wctx, s.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
		for resp := range wch {
			if resp.CompactRevision > 0 {
				s.log.Warn("fleet store compacted past the snapshot; reloading", "revision", from, "compacted", resp.CompactRevision)
				lctx, lcancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
				if err := s.load(lctx); err != nil {
					s.log.Warn("reloading the fleet snapshot failed", "error", err)
				}
				lcancel()
				break
			}
			if err := resp.Err(); err != nil {
				s.log.Debug("fleet store watch interrupted; resuming", "error", err)
				break
			}
			s.apply(resp)
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// apply takes a watch response. Only events move the snapshot's revision:
// etcd before 3.4.24 and 3.5.8 (Debian 12 ships 3.4.23) answers a
// requested progress notification with its current revision ahead of
// events it has yet to send on the stream (etcd#15220). Taken as applied,
// that revision let WaitRevision and Sync return before the events came,
// and a watch that broke then resumed after them and lost them for good.
// A notification still proves contact. Events at or below the revision
// are already in the snapshot (a reload read past them) and are skipped;
// etcd never splits one revision's events across responses.
func (s *Store) apply(resp clientv3.WatchResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	applied := s.rev
	for _, ev := range resp.Events {
		if ev.Kv.ModRevision <= applied {
			continue
		}
		s.rev = max(s.rev, ev.Kv.ModRevision)
		kind, key, ok := s.split(string(ev.Kv.Key))
		if !ok {
			continue
		}
		if ev.Type == clientv3.EventTypeDelete {
			delete(s.data[kind], key)
		} else {
			s.data[kind][key] = ev.Kv.Value
		}
	}
	s.contact = time.Now()
	s.cond.Broadcast()
}

// Get returns a record from the snapshot.
func (s *Store) Get(kind, key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[kind][key]
	return v, ok
}

// List returns every record of kind from the snapshot, sorted by key.
func (s *Store) List(kind string) []secrets.KV {
	s.mu.Lock()
	out := make([]secrets.KV, 0, len(s.data[kind]))
	for k, v := range s.data[kind] {
		out = append(out, secrets.KV{Key: k, Value: v})
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Fresh is nil while etcd confirmed the snapshot within MaxStaleness.
func (s *Store) Fresh() error {
	s.mu.Lock()
	age := time.Since(s.contact)
	s.mu.Unlock()
	if age > s.cfg.MaxStaleness {
		return fmt.Errorf("no contact with the fleet store (etcd %s) for %s, longer than max_staleness %s: "+
			"refusing jobs that need a grant until it answers again (a grant revoked meanwhile must not keep working): %w",
			strings.Join(s.cfg.Endpoints, ","), age.Round(time.Second), s.cfg.MaxStaleness, secrets.ErrStale)
	}
	return nil
}

// Staleness is how long ago etcd last confirmed the snapshot.
func (s *Store) Staleness() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Since(s.contact)
}

// Revision is the revision the snapshot is current to.
func (s *Store) Revision() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// WaitRevision waits until the snapshot has applied rev.
func (s *Store) WaitRevision(ctx context.Context, rev int64) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.rev < rev && !s.closed {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for the fleet snapshot to reach revision %d: %w", rev, context.Cause(ctx))
		}
		s.cond.Wait()
	}
	return nil
}

// Sync makes the snapshot hold everything committed before the call: it
// reads the snapshotted records afresh (linearizable) and takes them if
// the snapshot is older. Waiting for the watch instead would trust its
// progress notifications (see apply), and would not end when the cluster's
// revision moved by keys outside the prefix.
func (s *Store) Sync(ctx context.Context) error {
	if err := s.load(ctx); err != nil {
		return fmt.Errorf("reading the fleet store: %w", err)
	}
	return nil
}

// catchUpWait is how long Commit waits for the watch to bring its own
// write before it reads the snapshot afresh.
const catchUpWait = 2 * time.Second

// catchUp returns once the snapshot has applied rev: from the watch, or,
// if the watch has not brought it within catchUpWait (a transaction that
// wrote nothing returns a revision no event of the prefix carries), from
// a fresh read.
func (s *Store) catchUp(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithTimeout(ctx, catchUpWait)
	err := s.WaitRevision(wctx, rev)
	cancel()
	if err == nil || ctx.Err() != nil {
		return err
	}
	return s.Sync(ctx)
}

// Commit applies ops in one etcd transaction: all or none.
func (s *Store) Commit(ctx context.Context, ops ...secrets.RemoteOp) error {
	var conds []clientv3.Cmp
	var then []clientv3.Op
	seen := map[string]bool{}
	cond := func(key string) {
		if !seen[key] {
			seen[key] = true
			conds = append(conds, clientv3.Compare(clientv3.Version(key), ">", 0))
		}
	}
	for _, op := range ops {
		key := s.cfg.Prefix + op.Kind + "/" + op.Key
		if op.MustExist {
			cond(key)
		}
		for _, r := range op.Require {
			cond(s.cfg.Prefix + r[0] + "/" + r[1])
		}
		if op.Value == nil {
			then = append(then, clientv3.OpDelete(key))
		} else {
			then = append(then, clientv3.OpPut(key, string(op.Value)))
		}
	}
	if n := len(then) + len(conds); n > MaxTxnOps {
		return fmt.Errorf("one all-or-nothing write of %d records and conditions is more than etcd's default --max-txn-ops %d: split it, or raise --max-txn-ops on every member", n, MaxTxnOps)
	}
	resp, err := s.cli.Txn(ctx).If(conds...).Then(then...).Commit()
	if err != nil {
		return fmt.Errorf("writing to the fleet store: %w", err)
	}
	if !resp.Succeeded {
		return s.missing(ctx, ops)
	}
	return s.catchUp(ctx, resp.Header.Revision)
}

// missing names the first record a failed transaction needed.
func (s *Store) missing(ctx context.Context, ops []secrets.RemoteOp) error {
	exists := func(key string) bool {
		r, err := s.cli.Get(ctx, key, clientv3.WithCountOnly())
		return err == nil && r.Count > 0
	}
	for _, op := range ops {
		if op.MustExist && !exists(s.cfg.Prefix+op.Kind+"/"+op.Key) {
			return fmt.Errorf("%s: %w", op.What, secrets.ErrNotFound)
		}
		for _, r := range op.Require {
			if !exists(s.cfg.Prefix + r[0] + "/" + r[1]) {
				return fmt.Errorf("%s: %s %q: %w", op.What, strings.TrimSuffix(r[0], "s"), r[1], secrets.ErrNotFound)
			}
		}
	}
	return fmt.Errorf("writing to the fleet store: a record changed meanwhile: %w", secrets.ErrNotFound)
}

// Close stops the watch and closes the client.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	return s.cli.Close()
}
