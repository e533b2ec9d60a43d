package wiring

import (
	"context"
	"errors"
	"os"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/fleet"
)

// FleetConfig turns [store] into the fleet store's settings.
func FleetConfig(c config.Store) fleet.Config {
	return fleet.Config{Endpoints: c.Endpoints, CertFile: c.CertFile, KeyFile: c.KeyFile, CAFile: c.CAFile,
		Prefix: c.Prefix, MaxStaleness: c.MaxStaleness, Heartbeat: c.Heartbeat}
}

// FleetHost is this host's name in the fleet: [store] host, else
// hostname-runnerid (unique per state directory).
func FleetHost(c config.Store, runnerID string) string {
	if c.Host != "" {
		return c.Host
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "host"
	}
	return h + "-" + runnerID
}

// openFleet, with [store] backend = "etcd", puts store's secrets, grants
// and policies on etcd and mirrors its journal there.
func openFleet(ctx context.Context, cfg *config.Config, runnerID string, store *secrets.Store, log hclog.Logger, c *closers) (*fleet.Store, error) {
	if !cfg.Store.Fleet() {
		return nil, nil
	}
	fs, err := fleet.Open(ctx, FleetConfig(cfg.Store), FleetHost(cfg.Store, runnerID), log)
	if err != nil {
		return nil, err
	}
	c.add(fs.Close)
	if err := store.UseRemote(ctx, fs, fs); err != nil {
		return nil, err
	}
	return fs, nil
}

// startPeers registers this host and revokes for dead peers, recording
// each round in an audit trail of its own (peer-revoke-<host>-<time>).
func startPeers(ctx context.Context, r *runner.Runner, fs *fleet.Store, store *secrets.Store, runnerID string, log hclog.Logger, c *closers) error {
	var mu sync.Mutex
	trails := map[string]*audit.Trail{}
	sink := func(peer string) secrets.EventSink {
		return func(ctx context.Context, e secrets.Event) error {
			mu.Lock()
			t := trails[peer]
			mu.Unlock()
			if t == nil {
				return nil
			}
			f := audit.Fields{"peer": e.Peer, "peer_job": e.JobID, audit.FieldSecret: e.Secret, audit.FieldGrant: e.GrantID,
				audit.FieldLease: e.LeaseID, audit.FieldFingerprint: e.Fingerprint}
			if e.Reason != "" {
				f[audit.FieldError] = e.Reason
			}
			_, err := t.Append(ctx, audit.EventType(e.Type), f)
			return err
		}
	}
	if err := store.PutAuditKey(fs.Host(), r.Audit.Key.VerifierKey()); err != nil {
		return err
	}
	p, err := fs.StartPeers(ctx, func(ctx context.Context, peer string, l secrets.MirroredLease) error {
		return r.Broker.RevokePeer(ctx, peer, l, sink(peer))
	})
	if err != nil {
		return err
	}
	p.OnRound = func(ctx context.Context, peer string, begin bool, rerr error) {
		mu.Lock()
		defer mu.Unlock()
		if begin {
			t, err := r.Audit.OpenOwn(runnerID, runner.OwnTrailPeerRevoke, peer)
			if err != nil {
				log.Error("opening the peer-revocation audit trail", "peer", peer, "error", err)
				return
			}
			trails[peer] = t
			return
		}
		t := trails[peer]
		delete(trails, peer)
		if t == nil {
			return
		}
		reason := "peer " + peer + " revoked"
		if rerr != nil {
			reason = "peer " + peer + " partly revoked; retried: " + rerr.Error()
		}
		_, serr := t.Seal(context.WithoutCancel(ctx), reason)
		if err := errors.Join(serr, t.Close()); err != nil {
			log.Error("sealing the peer-revocation audit trail", "peer", peer, "error", err)
		}
	}
	c.add(p.Stop)
	return nil
}

func peerDone(fs *fleet.Store) func(context.Context, string, string) (string, bool, error) {
	if fs == nil {
		return nil
	}
	return fs.PeerDone
}
