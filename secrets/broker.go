package secrets

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/backoff"
	"github.com/airlock-ci/airlock/internal/procs"
	"github.com/airlock-ci/airlock/runner/job"
)

// EventType names a broker event for the audit trail.
type EventType string

// Broker events.
const (
	EventGrantDecision EventType = "grant_decision"
	EventMinted        EventType = "credential_minted"
	EventMintFailed    EventType = "credential_mint_failed"
	EventRevoked       EventType = "credential_revoked"
	EventRevokeFailed  EventType = "credential_revoke_failed"
	EventExpired       EventType = "credential_expired_unrevoked"
	EventUnknown       EventType = "credential_mint_outcome_unknown"
	// EventPeerRevoked: this host revoked a credential of a dead peer
	// (fleet mode); Peer names the dead host.
	EventPeerRevoked EventType = "peer_revoked"
	// EventPeerRevokeFailed: a dead peer's credential could not be revoked
	// yet; the round is retried.
	EventPeerRevokeFailed EventType = "peer_revoke_failed"
)

// Event is a broker event. It never carries a secret value or handle:
// credentials are named by grant id, lease id and fingerprint.
type Event struct {
	Type        EventType
	Time        time.Time
	JobID       string
	Secret      string
	GrantID     string
	LeaseID     string
	Backend     string
	Delivery    job.Delivery
	Var         string
	Fingerprint string
	Expires     time.Time
	Allowed     bool   // grant decisions
	Reason      string // refusals, failures, notes ("static secret: nothing to revoke")
	Attempt     int
	Peer        string // peer events: the dead host
}

// EventSink receives broker events. An error from the sink while deciding
// or before minting fails the job closed (nothing is minted unaudited);
// later errors are returned joined with the operation's other failures.
type EventSink func(ctx context.Context, e Event) error

// BrokerOptions configure a Broker.
type BrokerOptions struct {
	Store    *Store
	Backends map[string]Backend // by backend name; builtin is added when missing
	Logger   hclog.Logger
	Events   EventSink // may be nil

	// Slack is added to the job timeout to bound every credential's
	// lifetime (default 5m); DefaultTimeout stands in for a job without
	// one (default 1h).
	Slack          time.Duration
	DefaultTimeout time.Duration
	// RevokeAttempts and RevokeBackoff shape Release's retries: attempts
	// in total, the first wait (doubled each time, with jitter).
	RevokeAttempts int
	RevokeBackoff  time.Duration

	// PeerDone, in fleet mode, says whether a peer already revoked one of
	// this host's leases while the host was declared dead; recovery then
	// records the lease revoked without revoking or reporting it again.
	PeerDone func(ctx context.Context, jobID, leaseID string) (by string, ok bool, err error)
}

// Broker mints the credentials a job was granted and revokes them when it
// ends, journaling every step in the store so that a crash leaves enough
// to revoke on the next start. Safe for concurrent use.
type Broker struct {
	store    *Store
	backends map[string]Backend
	log      hclog.Logger
	events   EventSink
	opts     BrokerOptions

	mu       sync.Mutex
	inflight map[string]bool // lease keys being revoked
}

// NewBroker returns a broker.
func NewBroker(opts BrokerOptions) (*Broker, error) {
	if opts.Store == nil {
		return nil, errors.New("creating broker: no store")
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Slack <= 0 {
		opts.Slack = 5 * time.Minute
	}
	if opts.DefaultTimeout <= 0 {
		opts.DefaultTimeout = time.Hour
	}
	if opts.RevokeAttempts <= 0 {
		opts.RevokeAttempts = 4
	}
	if opts.RevokeBackoff <= 0 {
		opts.RevokeBackoff = 250 * time.Millisecond
	}
	be := map[string]Backend{BackendBuiltin: Builtin{}}
	for k, v := range opts.Backends {
		be[k] = v
	}
	return &Broker{store: opts.Store, backends: be, log: opts.Logger.Named("secrets"), events: opts.Events,
		opts: opts, inflight: map[string]bool{}}, nil
}

func (b *Broker) emit(ctx context.Context, e Event) error {
	e.Time = time.Now().UTC()
	if b.events == nil {
		return nil
	}
	if err := b.events(ctx, e); err != nil {
		return fmt.Errorf("recording %s event: %w", e.Type, err)
	}
	return nil
}

type planned struct {
	dec    Decision
	secret Secret
	lease  *leaseRecord
}

// Prepare decides every declared secret of the job and, only if all are
// granted, journals an intent per credential (fsynced), mints them and
// records their handles. Any refusal fails the whole job before anything
// is minted, with messages naming the secret, the job's identity and the
// `airlock grant add` line an admin would run (each a *RefusedError). A
// failure after minting started revokes what was minted.
func (b *Broker) Prepare(ctx context.Context, id JobIdentity, reqs []job.SecretRequest) (*JobCredentials, error) {
	var grants []Grant
	if len(reqs) > 0 {
		var err error
		if grants, err = b.store.Grants(); err != nil {
			return nil, fmt.Errorf("preparing credentials for job %s: %w", id.JobID, err)
		}
	}
	var refused, failed []error
	plan := make([]planned, 0, len(reqs))
	for _, req := range reqs {
		d := Decide(grants, id, req)
		ev := Event{Type: EventGrantDecision, JobID: id.JobID, Secret: req.Name, Allowed: d.Allowed(), Var: d.VarName()}
		if d.Allowed() {
			ev.GrantID, ev.Delivery = d.Grant.ID, d.Grant.Delivery
		} else {
			ev.Reason = d.refusal()
			refused = append(refused, d.Err())
		}
		if err := b.emit(ctx, ev); err != nil {
			failed = append(failed, err)
		}
		if !d.Allowed() {
			continue
		}
		sec, err := b.store.Secret(req.Name)
		if err != nil {
			failed = append(failed, err)
			continue
		}
		if _, ok := b.backends[sec.Backend]; !ok {
			failed = append(failed, fmt.Errorf("secret %q: backend %q is not configured on this runner", sec.Name, sec.Backend))
			continue
		}
		plan = append(plan, planned{dec: d, secret: sec})
	}
	if err := errors.Join(append(refused, failed...)...); err != nil {
		return nil, fmt.Errorf("preparing credentials for job %s: %w", id.JobID, err)
	}

	now := time.Now().UTC()
	owner, err := procs.Self()
	if err != nil {
		return nil, fmt.Errorf("preparing credentials for job %s: %w", id.JobID, err)
	}
	jr := &JobRecord{ID: id.JobID, Repo: id.Repo, Ref: id.Ref, State: JobRunning, Started: now, Owner: owner}
	leases := make([]*leaseRecord, len(plan))
	for i := range plan {
		p := &plan[i]
		p.lease = &leaseRecord{ID: newID(10), JobID: id.JobID, GrantID: p.dec.Grant.ID, Secret: p.secret.Name,
			Backend: p.secret.Backend, State: LeaseIntent, Created: now}
		leases[i] = p.lease
	}
	if err := b.store.putLeases(jr, leases...); err != nil {
		return nil, fmt.Errorf("journaling credential intents for job %s (nothing minted): %w", id.JobID, err)
	}

	creds := &JobCredentials{JobID: id.JobID}
	for i := range plan {
		d, err := b.mint(ctx, id, &plan[i])
		if err != nil {
			var rest []*leaseRecord
			for j := i + 1; j < len(plan); j++ {
				l := plan[j].lease
				l.State, l.LastError = LeaseRevoked, "never minted: an earlier credential of the job failed"
				rest = append(rest, l)
			}
			jerr := b.store.putLeases(nil, rest...)
			rerr := errors.Join(jerr, b.Release(context.WithoutCancel(ctx), id.JobID))
			creds.Wipe()
			return nil, errors.Join(fmt.Errorf("preparing credentials for job %s: %w", id.JobID, err), rerr)
		}
		creds.Creds = append(creds.Creds, d)
	}
	return creds, nil
}

func (b *Broker) lifetimes(id JobIdentity, g *Grant) (ttl, maxTTL time.Duration) {
	timeout := id.Timeout
	if timeout <= 0 {
		timeout = b.opts.DefaultTimeout
	}
	maxTTL = timeout + b.opts.Slack
	ttl = g.TTL
	if ttl <= 0 || ttl > maxTTL {
		ttl = maxTTL
	}
	return ttl, maxTTL
}

func (b *Broker) mint(ctx context.Context, id JobIdentity, p *planned) (Delivered, error) {
	g, l := p.dec.Grant, p.lease
	ttl, maxTTL := b.lifetimes(id, g)
	cred, err := b.backends[p.secret.Backend].Mint(ctx, MintRequest{Secret: p.secret, Grant: *g, Job: id, TTL: ttl, MaxTTL: maxTTL})
	if err != nil {
		l.State, l.LastError = LeaseRevoked, "mint failed: "+err.Error()
		jerr := b.store.putLeases(nil, l)
		eerr := b.emit(ctx, Event{Type: EventMintFailed, JobID: id.JobID, Secret: l.Secret, GrantID: l.GrantID, LeaseID: l.ID, Backend: l.Backend, Reason: err.Error()})
		return Delivered{}, errors.Join(fmt.Errorf("minting %q (grant %s): %w", l.Secret, g.ID, err), jerr, eerr)
	}
	l.State, l.Fingerprint, l.Expires = LeaseMinted, b.store.Fingerprint(cred.Value), cred.Expires
	err = b.store.sealHandle(l, cred.Handle)
	if err == nil {
		err = b.store.putLeases(nil, l)
	}
	if err != nil {
		// The handle is not on disk: revoke now or never.
		sec := p.secret
		rerr := b.backends[l.Backend].Revoke(context.WithoutCancel(ctx), RevokeRequest{Secret: sec, Handle: cred.Handle})
		clear(cred.Value)
		return Delivered{}, errors.Join(fmt.Errorf("journaling lease %s of %q: %w", l.ID, l.Secret, err), rerr)
	}
	d := Delivered{Secret: l.Secret, GrantID: g.ID, LeaseID: l.ID, Backend: l.Backend, Fingerprint: l.Fingerprint,
		Var: p.dec.VarName(), Delivery: g.Delivery, Expires: cred.Expires}
	switch g.Delivery {
	case job.DeliverProxy:
		d.Value, d.Real = []byte(NewSurrogate()), cred.Value
		d.Hosts, d.Header = append([]string(nil), g.Hosts...), g.HeaderTemplate()
	case job.DeliverMTLS:
		// The job gets nothing; the gateway presents the certificate.
		d.Real, d.Hosts = cred.Value, append([]string(nil), g.Hosts...)
	default:
		d.Value = cred.Value
	}
	if err := b.emit(ctx, Event{Type: EventMinted, JobID: id.JobID, Secret: l.Secret, GrantID: g.ID, LeaseID: l.ID,
		Backend: l.Backend, Delivery: g.Delivery, Var: d.Var, Fingerprint: l.Fingerprint, Expires: cred.Expires}); err != nil {
		clear(cred.Value)
		return Delivered{}, err
	}
	return d, nil
}

// Release revokes every credential of the job, retrying with exponential
// back-off, and marks the job finished. A revocation that still fails is
// recorded for the sweeper and returned (joined with any other failure).
// Release is idempotent and must be called on every exit of a job.
func (b *Broker) Release(ctx context.Context, jobID string) error {
	leases, err := b.store.jobLeases(jobID)
	if err != nil {
		return fmt.Errorf("releasing credentials of job %s: %w", jobID, err)
	}
	var errs []error
	for _, l := range leases {
		if l.State.final() {
			continue
		}
		if err := b.revoke(ctx, l, b.opts.RevokeAttempts); err != nil {
			errs = append(errs, err)
		}
	}
	if err := b.store.setJobState(jobID, JobFinished); err != nil {
		errs = append(errs, fmt.Errorf("marking job %s finished: %w", jobID, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("releasing credentials of job %s: %w", jobID, err)
	}
	return nil
}

// Recover, run once on start before any job, revokes every credential of
// every job the journal shows unfinished whose owning process is gone (a
// crash; jobs of other live airlock processes are left alone), marks those jobs
// recovered and returns them so the caller can report them failed. An
// intent without a handle (crash between journal and mint) cannot be
// revoked by handle: it is recorded and evented as outcome unknown; the
// credential is bounded by its TTL (job timeout + slack).
func (b *Broker) Recover(ctx context.Context) ([]JobRecord, error) {
	jobs, err := b.store.Jobs(JobRunning)
	if err != nil {
		return nil, fmt.Errorf("recovering: %w", err)
	}
	var errs []error
	var recovered []JobRecord
	for i := range jobs {
		jr := &jobs[i]
		if jr.Owner.Alive() {
			continue // another airlock process on this host runs it
		}
		b.log.Warn("revoking credentials of a job left by a crash", "job", jr.ID)
		leases, err := b.store.jobLeases(jr.ID)
		if err != nil {
			errs = append(errs, fmt.Errorf("recovering job %s: %w", jr.ID, err))
			continue
		}
		for _, l := range leases {
			if l.State.final() {
				continue
			}
			if b.opts.PeerDone != nil && l.State != LeaseIntent {
				by, done, err := b.opts.PeerDone(ctx, l.JobID, l.ID)
				if err != nil {
					errs = append(errs, err)
				} else if done {
					l.State, l.LastError = LeaseRevoked, "revoked by peer "+by+" while this host was declared dead"
					errs = append(errs, b.store.putLeases(nil, l))
					continue
				}
			}
			if l.State == LeaseIntent {
				l.State, l.LastError = LeaseUnknown, "runner stopped between journaling and minting"
				errs = append(errs, b.store.putLeases(nil, l), b.emit(ctx, Event{Type: EventUnknown, JobID: l.JobID, Secret: l.Secret,
					GrantID: l.GrantID, LeaseID: l.ID, Backend: l.Backend, Reason: l.LastError}))
				continue
			}
			if err := b.revoke(ctx, l, b.opts.RevokeAttempts); err != nil {
				errs = append(errs, err)
			}
		}
		if err := b.store.setJobState(jr.ID, JobRecovered); err != nil {
			errs = append(errs, fmt.Errorf("marking job %s recovered: %w", jr.ID, err))
		}
		jr.State = JobRecovered
		recovered = append(recovered, *jr)
	}
	if err := errors.Join(errs...); err != nil {
		return recovered, fmt.Errorf("recovering: %w", err)
	}
	return recovered, nil
}

// RevokePeer revokes one credential of a dead peer host (fleet mode) with
// this host's backends, retrying like Release, and records the outcome
// through sink (the peer-revocation trail of this host). The secret's
// config and the sealed handle come from the fleet store.
func (b *Broker) RevokePeer(ctx context.Context, peer string, m MirroredLease, sink EventSink) error {
	ev := Event{Type: EventPeerRevoked, Time: time.Now().UTC(), JobID: m.JobID, Secret: m.Secret, GrantID: m.GrantID,
		LeaseID: m.LeaseID, Backend: m.Backend, Fingerprint: m.Fingerprint, Expires: m.Expires, Peer: peer}
	record := func(err error) error {
		if err != nil {
			ev.Type, ev.Reason = EventPeerRevokeFailed, err.Error()
		}
		var serr error
		if sink != nil {
			serr = sink(ctx, ev)
		}
		if err != nil {
			return errors.Join(fmt.Errorf("revoking lease %s of dead host %s (job %s): %w", m.LeaseID, peer, m.JobID, err), serr)
		}
		return serr
	}
	handle, err := b.store.OpenMirroredHandle(m)
	if err != nil {
		return record(err)
	}
	if handle == "" {
		ev.Reason = "nothing to revoke: static value, bounded by its grant only"
		return record(nil)
	}
	be, ok := b.backends[m.Backend]
	if !ok {
		return record(fmt.Errorf("backend %q is not configured on this runner", m.Backend))
	}
	sec, err := b.store.Secret(m.Secret)
	if err != nil {
		return record(err)
	}
	wait := b.opts.RevokeBackoff
	for i := 1; ; i++ {
		ev.Attempt = i
		err = be.Revoke(ctx, RevokeRequest{Secret: sec, Handle: handle})
		if err == nil || i >= b.opts.RevokeAttempts {
			break
		}
		if serr := backoff.Sleep(ctx, backoff.Jitter(wait)); serr != nil {
			err = errors.Join(err, serr)
			break
		}
		wait *= 2
	}
	return record(err)
}
