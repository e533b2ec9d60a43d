package secrets

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/airlock-ci/airlock/internal/backoff"
)

// revoke revokes one lease, trying up to attempts times with exponential
// back-off, and journals the outcome. A lease another goroutine is
// revoking is left to it.
func (b *Broker) revoke(ctx context.Context, l *leaseRecord, attempts int) error {
	key := string(l.key())
	b.mu.Lock()
	if b.inflight[key] {
		b.mu.Unlock()
		return nil
	}
	b.inflight[key] = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.inflight, key)
		b.mu.Unlock()
	}()

	ev := Event{JobID: l.JobID, Secret: l.Secret, GrantID: l.GrantID, LeaseID: l.ID, Backend: l.Backend,
		Fingerprint: l.Fingerprint, Expires: l.Expires}
	handle, err := b.store.openHandle(l)
	if err != nil {
		return b.revokeFailed(ctx, l, ev, err)
	}
	if handle == "" {
		l.State, l.LastError = LeaseRevoked, ""
		ev.Type, ev.Reason = EventRevoked, "nothing to revoke: static value, bounded by its grant only"
		return errors.Join(b.store.putLeases(nil, l), b.emit(ctx, ev))
	}
	be, ok := b.backends[l.Backend]
	if !ok {
		return b.revokeFailed(ctx, l, ev, fmt.Errorf("backend %q is not configured on this runner", l.Backend))
	}
	sec, err := b.store.Secret(l.Secret)
	if err != nil {
		return b.revokeFailed(ctx, l, ev, err)
	}
	wait := b.opts.RevokeBackoff
	for i := 1; ; i++ {
		l.Attempts++
		ev.Attempt = l.Attempts
		err = be.Revoke(ctx, RevokeRequest{Secret: sec, Handle: handle})
		if err == nil {
			l.State, l.LastError = LeaseRevoked, ""
			ev.Type = EventRevoked
			return errors.Join(b.store.putLeases(nil, l), b.emit(ctx, ev))
		}
		b.log.Warn("revoking credential failed", "job", l.JobID, "lease", l.ID, "grant", l.GrantID, "attempt", l.Attempts, "error", err)
		if i >= attempts {
			break
		}
		if serr := backoff.Sleep(ctx, backoff.Jitter(wait)); serr != nil {
			err = errors.Join(err, serr)
			break
		}
		wait *= 2
	}
	return b.revokeFailed(ctx, l, ev, err)
}

func (b *Broker) revokeFailed(ctx context.Context, l *leaseRecord, ev Event, cause error) error {
	l.LastError = cause.Error()
	l.State = LeaseRevokeFailed
	ev.Type, ev.Reason = EventRevokeFailed, cause.Error()
	if !l.Expires.IsZero() && time.Now().After(l.Expires) {
		l.State = LeaseExpired
		ev.Type, ev.Reason = EventExpired, "revocation never succeeded; the credential expired at "+l.Expires.Format(time.RFC3339)+": "+cause.Error()
		return errors.Join(b.store.putLeases(nil, l), b.emit(ctx, ev))
	}
	return errors.Join(fmt.Errorf("revoking lease %s of %q (grant %s): %w", l.ID, l.Secret, l.GrantID, cause),
		b.store.putLeases(nil, l), b.emit(ctx, ev))
}

// Sweep makes one attempt at every revocation that failed before (and at
// minted leases of jobs no longer running). A lease whose revocation
// keeps failing is given up once its credential's own expiry has passed,
// with an event saying so. It returns the failures of this pass.
func (b *Broker) Sweep(ctx context.Context) error {
	running := map[string]bool{}
	jobs, err := b.store.Jobs(JobRunning)
	if err != nil {
		return fmt.Errorf("sweeping: %w", err)
	}
	for _, j := range jobs {
		running[j.ID] = true
	}
	leases, err := b.store.allLeases(func(l *leaseRecord) bool {
		return l.State == LeaseRevokeFailed || l.State == LeaseMinted && !running[l.JobID]
	})
	if err != nil {
		return fmt.Errorf("sweeping: %w", err)
	}
	var errs []error
	for _, l := range leases {
		if err := b.revoke(ctx, l, 1); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweeping: %w", err)
	}
	return nil
}

// RunSweeper calls Sweep at once and then every interval until ctx ends;
// failures are logged (each is also evented and journaled by Sweep).
func (b *Broker) RunSweeper(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := b.Sweep(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("credential sweep left failures", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
