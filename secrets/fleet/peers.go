package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/airlock-ci/airlock/secrets"
)

func (s *Store) journalKey(host, job, lease string) string {
	return s.cfg.Prefix + "journal/" + host + "/" + job + "/" + lease
}

func (s *Store) doneKey(host, job, lease string) string {
	return s.cfg.Prefix + "done/" + host + "/" + job + "/" + lease
}

// MirrorLeases copies this host's journal entries to etcd in one
// transaction: a live lease is put (sealed handle), a final one removed.
// The entries are not attached to the host's lease: they must outlive
// the host.
func (s *Store) MirrorLeases(ctx context.Context, ls []secrets.MirroredLease) error {
	var ops []clientv3.Op
	for _, l := range ls {
		key := s.journalKey(s.host, l.JobID, l.LeaseID)
		if l.Final() {
			ops = append(ops, clientv3.OpDelete(key))
			continue
		}
		v, err := json.Marshal(l)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(key, string(v)))
	}
	for len(ops) > 0 {
		n := min(len(ops), MaxTxnOps)
		if _, err := s.cli.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			return fmt.Errorf("mirroring %d journal entries: %w", n, err)
		}
		ops = ops[n:]
	}
	return nil
}

// LiveLeasesOf counts the mirrored, not yet revoked leases of every host
// minted from secret.
func (s *Store) LiveLeasesOf(ctx context.Context, secret string) (int, error) {
	resp, err := s.cli.Get(ctx, s.cfg.Prefix+"journal/", clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("reading the fleet's journals: %w", err)
	}
	n := 0
	for _, kv := range resp.Kvs {
		var l secrets.MirroredLease
		if json.Unmarshal(kv.Value, &l) == nil && l.Secret == secret && !l.Final() {
			n++
		}
	}
	return n, nil
}

// PeerDone reports whether a peer revoked this host's lease while the
// host was declared dead, and which peer.
func (s *Store) PeerDone(ctx context.Context, job, lease string) (by string, ok bool, err error) {
	resp, err := s.cli.Get(ctx, s.doneKey(s.host, job, lease))
	if err != nil {
		return "", false, fmt.Errorf("reading peer revocations: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", false, nil
	}
	var d doneRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &d); err != nil {
		return "", false, fmt.Errorf("decoding peer revocation of %s/%s: %w", job, lease, err)
	}
	return d.By, true, nil
}

type hostRecord struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}

type doneRecord struct {
	By      string    `json:"by"`
	At      time.Time `json:"at"`
	Outcome string    `json:"outcome"`
}

// PeerRevoker revokes one credential of a dead host, recording it in the
// caller's own audit trail; it returns an error to retry later.
type PeerRevoker func(ctx context.Context, deadHost string, l secrets.MirroredLease) error

// Peers registers this host and revokes for hosts whose lease expired.
type Peers struct {
	s      *Store
	revoke PeerRevoker
	// OnRound, when set, is called around each revocation round for a
	// dead host (for the caller's audit trail): begin before the first
	// credential, end after the last with the round's error.
	OnRound func(ctx context.Context, deadHost string, begin bool, err error)

	mu      sync.Mutex
	session *concurrency.Session
	busy    map[string]bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartPeers registers this host under a lease of cfg.Heartbeat and
// starts watching for dead peers. Stop deregisters.
func (s *Store) StartPeers(ctx context.Context, revoke PeerRevoker) (*Peers, error) {
	p := &Peers{s: s, revoke: revoke, busy: map[string]bool{}}
	if err := p.register(ctx); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p.cancel = cancel
	p.wg.Add(2)
	go func() { defer p.wg.Done(); p.keepRegistered(rctx) }()
	go func() { defer p.wg.Done(); p.watchHosts(rctx) }()
	return p, nil
}

func (p *Peers) register(ctx context.Context) error {
	ttl := int(p.s.cfg.Heartbeat / time.Second)
	if ttl < 1 {
		ttl = 1
	}
	sess, err := concurrency.NewSession(p.s.cli, concurrency.WithTTL(ttl), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return fmt.Errorf("registering host %s with the fleet store: %w", p.s.host, err)
	}
	v, _ := json.Marshal(hostRecord{Host: p.s.host, PID: os.Getpid(), Started: time.Now().UTC()})
	if _, err := p.s.cli.Put(ctx, p.s.cfg.Prefix+"hosts/"+p.s.host, string(v), clientv3.WithLease(sess.Lease())); err != nil {
		return errors.Join(fmt.Errorf("registering host %s with the fleet store: %w", p.s.host, err), sess.Close())
	}
	p.mu.Lock()
	p.session = sess
	p.mu.Unlock()
	return nil
}

// keepRegistered registers again whenever the session's lease is lost
// (etcd unreachable for longer than the heartbeat: peers have meanwhile
// revoked this host's credentials of that time).
func (p *Peers) keepRegistered(ctx context.Context) {
	for {
		p.mu.Lock()
		sess := p.session
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
		}
		p.s.log.Warn("fleet registration lease lost; registering again", "host", p.s.host)
		for ctx.Err() == nil {
			rctx, cancel := context.WithTimeout(ctx, p.s.cfg.DialTimeout)
			err := p.register(rctx)
			cancel()
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// watchHosts revokes for every host with journal entries and no
// registration: at start (hosts that died while this one was away) and
// whenever a registration disappears.
func (p *Peers) watchHosts(ctx context.Context) {
	p.sweepDead(ctx)
	hosts := p.s.cfg.Prefix + "hosts/"
	for ctx.Err() == nil {
		wch := p.s.cli.Watch(clientv3.WithRequireLeader(ctx), hosts, clientv3.WithPrefix())
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					p.dead(ctx, strings.TrimPrefix(string(ev.Kv.Key), hosts))
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
		p.sweepDead(ctx) // deletions missed while the watch was down
	}
}

func (p *Peers) sweepDead(ctx context.Context) {
	resp, err := p.s.cli.Get(ctx, p.s.cfg.Prefix+"journal/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return
	}
	withJournal := map[string]bool{}
	for _, kv := range resp.Kvs {
		host, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), p.s.cfg.Prefix+"journal/"), "/")
		withJournal[host] = true
	}
	for host := range withJournal {
		if host == p.s.host {
			continue
		}
		r, err := p.s.cli.Get(ctx, p.s.cfg.Prefix+"hosts/"+host, clientv3.WithCountOnly())
		if err == nil && r.Count == 0 {
			p.dead(ctx, host)
		}
	}
}

// dead starts (once at a time per host) the revocation round for host.
func (p *Peers) dead(ctx context.Context, host string) {
	if host == p.s.host || host == "" {
		return
	}
	p.mu.Lock()
	if p.busy[host] {
		p.mu.Unlock()
		return
	}
	p.busy[host] = true
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() { p.mu.Lock(); delete(p.busy, host); p.mu.Unlock() }()
		for attempt := 0; ctx.Err() == nil; attempt++ {
			err := p.round(ctx, host)
			if err == nil {
				return
			}
			p.s.log.Warn("revoking a dead peer's credentials failed; retrying", "peer", host, "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(min(time.Duration(attempt+1)*time.Second, 15*time.Second)):
			}
		}
	}()
}

// round: the surviving hosts queue on one mutex per dead host; the one
// holding it revokes every credential still mirrored for the host, marks
// each done and removes it, so that the next holder finds nothing left.
func (p *Peers) round(ctx context.Context, host string) error {
	p.mu.Lock()
	sess := p.session
	p.mu.Unlock()
	m := concurrency.NewMutex(sess, p.s.cfg.Prefix+"locks/peer-revoke/"+host)
	if err := m.Lock(ctx); err != nil {
		return fmt.Errorf("electing the host that revokes for %s: %w", host, err)
	}
	defer func() { _ = m.Unlock(context.WithoutCancel(ctx)) }()
	if r, err := p.s.cli.Get(ctx, p.s.cfg.Prefix+"hosts/"+host, clientv3.WithCountOnly()); err != nil {
		return err
	} else if r.Count > 0 {
		return nil // it came back
	}
	resp, err := p.s.cli.Get(ctx, p.s.cfg.Prefix+"journal/"+host+"/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	if p.OnRound != nil {
		p.OnRound(ctx, host, true, nil)
	}
	var errs []error
	for _, kv := range resp.Kvs {
		var l secrets.MirroredLease
		if err := json.Unmarshal(kv.Value, &l); err != nil {
			errs = append(errs, fmt.Errorf("decoding %s: %w", kv.Key, err))
			continue
		}
		if err := p.revoke(ctx, host, l); err != nil {
			errs = append(errs, err)
			continue
		}
		v, _ := json.Marshal(doneRecord{By: p.s.host, At: time.Now().UTC(), Outcome: "revoked"})
		_, err := p.s.cli.Txn(ctx).If(m.IsOwner()).Then(
			clientv3.OpPut(p.s.doneKey(host, l.JobID, l.LeaseID), string(v)),
			clientv3.OpDelete(string(kv.Key)),
		).Commit()
		if err != nil {
			errs = append(errs, fmt.Errorf("marking %s/%s of %s done: %w", l.JobID, l.LeaseID, host, err))
		}
	}
	err = errors.Join(errs...)
	if p.OnRound != nil {
		p.OnRound(ctx, host, false, err)
	}
	return err
}

// Stop stops the monitor and removes this host's registration (a clean
// stop is not a death: nothing is left for peers to revoke).
func (p *Peers) Stop() error {
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	sess := p.session
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, derr := p.s.cli.Delete(ctx, p.s.cfg.Prefix+"hosts/"+p.s.host)
	return errors.Join(derr, sess.Close())
}

// Abandon stops the monitor without deregistering or revoking the lease,
// as a host that dies would (tests).
func (p *Peers) Abandon() {
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	p.session.Orphan()
	p.mu.Unlock()
}
