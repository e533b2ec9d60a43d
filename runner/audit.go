package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

// Auditor keeps every job's tamper-evident trail: records are fsynced to
// the spool before anything else sees them, and a shipper delivers them to
// the sinks (the directory sink among them, where sealed trails land).
type Auditor struct {
	SpoolDir string
	// Dir is where the directory sink writes <job>.jsonl.
	Dir string
	Key *audit.Key
	// Kick wakes the shipper when a record is durable (may be nil).
	Kick func(job string)

	mu     sync.RWMutex
	trails map[string]*jobTrail
	// crashed holds trails of crashed jobs reopened during recovery so
	// that their revocations are recorded before they are sealed.
	crashed map[string]*jobTrail
	// runnerID and log serve reopening crashed trails.
	runnerID string
	log      hclog.Logger
}

// AuditorConfig is what NewAuditor needs.
type AuditorConfig struct {
	SpoolDir string
	Dir      string // where the directory sink writes <job>.jsonl
	Key      *audit.Key
	Kick     func(job string) // wakes the shipper (may be nil)
	RunnerID string
	Logger   hclog.Logger
}

// NewAuditor returns an Auditor writing trails to c.SpoolDir.
func NewAuditor(c AuditorConfig) *Auditor {
	log := c.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Auditor{SpoolDir: c.SpoolDir, Dir: c.Dir, Key: c.Key, Kick: c.Kick, runnerID: c.RunnerID, log: log}
}

// jobTrail is one job's open trail.
type jobTrail struct {
	t   *audit.Trail
	log hclog.Logger
}

func (a *Auditor) open(runnerID string, j *job.Job, mask func(string) string, log hclog.Logger) (*jobTrail, error) {
	opts := []audit.Option{audit.WithMask(mask)}
	if a.Kick != nil {
		opts = append(opts, audit.WithDurable(a.Kick))
	}
	t, err := audit.Open(a.SpoolDir, runnerID, j.ID, a.Key, opts...)
	if err != nil {
		return nil, fmt.Errorf("opening the audit trail of job %s: %w", j.ID, err)
	}
	jt := &jobTrail{t: t, log: log}
	a.mu.Lock()
	if a.trails == nil {
		a.trails = map[string]*jobTrail{}
	}
	a.trails[j.ID] = jt
	a.mu.Unlock()
	return jt, nil
}

// Kinds of the trails of the runner's own work (OpenOwn).
const (
	OwnTrailAutoscale  = "autoscale"   // an autoscaler's decisions
	OwnTrailPeerRevoke = "peer-revoke" // a dead fleet peer's credentials revoked
)

// OpenOwn opens a trail of the runner's own work rather than a job's
// (kind is one of the OwnTrail kinds), named kind-name-<unix ns>
// (kind-<unix ns> when name makes no valid id), durable and shipped like
// a job's, sealed by the caller or, after a crash, by recovery.
func (a *Auditor) OpenOwn(runnerID, kind, name string) (*audit.Trail, error) {
	if kind != OwnTrailAutoscale && kind != OwnTrailPeerRevoke {
		return nil, fmt.Errorf("opening an audit trail of kind %q: no such kind", kind)
	}
	now := time.Now().UnixNano()
	id := fmt.Sprintf("%s-%s-%d", kind, name, now)
	if !audit.ValidID(id) {
		id = fmt.Sprintf("%s-%d", kind, now)
	}
	return audit.Open(a.SpoolDir, runnerID, id, a.Key, audit.WithDurable(a.Kick))
}

// ownTrailKind is the kind of an OpenOwn trail's id ("" for a job's).
func ownTrailKind(id string) string {
	for _, k := range []string{OwnTrailAutoscale, OwnTrailPeerRevoke} {
		rest, ok := strings.CutPrefix(id, k+"-")
		if !ok {
			continue
		}
		// The id ends in -<unix ns>.
		if i := strings.LastIndexByte(rest, '-'); i >= 0 {
			rest = rest[i+1:]
		}
		if _, err := strconv.ParseUint(rest, 10, 64); err == nil {
			return k
		}
	}
	return ""
}

func (a *Auditor) trail(jobID string) *jobTrail {
	if a == nil {
		return nil
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.trails[jobID]
}

func (a *Auditor) forget(jobID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.trails, jobID)
}

// record appends an event; the error matters where the caller must fail
// closed (credential decisions), elsewhere it is logged.
func (jt *jobTrail) record(ctx context.Context, ev audit.Event) error {
	if jt == nil {
		return nil
	}
	if _, err := jt.t.Log(ctx, ev); err != nil {
		return fmt.Errorf("writing the audit trail: %w", err)
	}
	return nil
}

// note appends an event, logging a failure.
func (jt *jobTrail) note(ctx context.Context, ev audit.Event) {
	if err := jt.record(ctx, ev); err != nil {
		jt.log.Error("audit record lost", "type", ev.Type, "error", err)
	}
}

// seal closes the trail with the job's outcome and returns where the
// sealed copy will be delivered.
func (a *Auditor) seal(ctx context.Context, jt *jobTrail, res *Result) (string, error) {
	defer a.forget(jt.t.Job())
	jt.note(ctx, audit.NewJobFinished(string(res.State), res.ExitCode, res.Duration, string(res.Reason)))
	if _, err := jt.t.Seal(ctx, string(res.State)); err != nil {
		return "", errors.Join(fmt.Errorf("sealing the audit trail of job %s: %w", jt.t.Job(), err), jt.t.Close())
	}
	return a.deliveredPath(jt.t.Job()), nil
}

// deliveredPath is where the directory sink puts a job's trail.
func (a *Auditor) deliveredPath(jobID string) string {
	return filepath.Join(a.Dir, jobID+audit.SpoolExt)
}

// awaitDelivered waits (bounded by ctx) until the directory sink holds
// the whole sealed trail at path: its last line is the seal.
func awaitDelivered(ctx context.Context, path string) error {
	for {
		if sealedFile(path) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the audit trail at %s: %w", path, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// brokerEvent turns a broker event into the job's audit record. It is the
// broker's event sink: an error fails a credential decision closed.
func (a *Auditor) brokerEvent(ctx context.Context, e secrets.Event) error {
	jt := a.trail(e.JobID)
	if jt == nil {
		var err error
		if jt, err = a.reopenCrashed(e.JobID); err != nil {
			return err
		}
	}
	if jt == nil {
		return nil // e.g. the sweeper's revocations after the job's trail was sealed
	}
	return jt.record(ctx, credentialEvent(e))
}

// reopenCrashed opens the unsealed trail of a job whose runner died, so
// that recovery records its revocations; sealCrashed seals it. A trail a
// live process holds, one already sealed or another runner's, or none at
// all gives nil, nil; any other failure to open it is an error (the event
// could not be recorded).
func (a *Auditor) reopenCrashed(jobID string) (*jobTrail, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if jt := a.crashed[jobID]; jt != nil {
		return jt, nil
	}
	if _, err := os.Stat(audit.SpoolPath(a.SpoolDir, jobID)); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("reopening the audit trail of crashed job %s: %w", jobID, err)
	}
	opts := []audit.Option{}
	if a.Kick != nil {
		opts = append(opts, audit.WithDurable(a.Kick))
	}
	t, err := audit.Open(a.SpoolDir, a.runnerID, jobID, a.Key, opts...)
	switch {
	case errors.Is(err, audit.ErrLocked), errors.Is(err, audit.ErrSealed), errors.Is(err, audit.ErrOtherRunner):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reopening the audit trail of crashed job %s: %w", jobID, err)
	}
	if a.crashed == nil {
		a.crashed = map[string]*jobTrail{}
	}
	log := a.log
	if log == nil {
		log = hclog.NewNullLogger()
	}
	jt := &jobTrail{t: t, log: log}
	a.crashed[jobID] = jt
	return jt, nil
}

// sealCrashed seals the trails reopened by recovery with runner_crashed
// and returns their jobs.
func (a *Auditor) sealCrashed(ctx context.Context) ([]string, error) {
	a.mu.Lock()
	crashed := a.crashed
	a.crashed = nil
	a.mu.Unlock()
	var jobs []string
	var errs []error
	for id, jt := range crashed {
		jt.note(ctx, audit.NewRunnerCrashed("runner process ended before the job finished", jt.t.TruncatedBytes()))
		if _, err := jt.t.Seal(ctx, "runner_crashed"); err != nil {
			errs = append(errs, fmt.Errorf("sealing the audit trail of job %s: %w", id, errors.Join(err, jt.t.Close())))
			continue
		}
		jobs = append(jobs, id)
	}
	return jobs, errors.Join(errs...)
}

func credentialEvent(e secrets.Event) audit.Event {
	switch e.Type {
	case secrets.EventGrantDecision:
		decision := "denied"
		if e.Allowed {
			decision = "granted"
		}
		return audit.NewGrantDecision(e.Secret, e.GrantID, decision, string(e.Delivery), e.Reason)
	case secrets.EventMinted:
		return audit.NewCredentialMinted(e.Secret, e.GrantID, e.LeaseID, e.Fingerprint, string(e.Delivery), e.Expires)
	case secrets.EventRevoked:
		return audit.NewCredentialRevoked(e.Secret, e.GrantID, e.LeaseID, e.Fingerprint)
	case secrets.EventRevokeFailed:
		return audit.NewCredentialRevokeFailed(e.Secret, e.GrantID, e.LeaseID, e.Attempt, errors.New(e.Reason))
	}
	return audit.NewAlert(string(e.Type), e.Reason, audit.Fields{
		audit.FieldSecret: e.Secret, audit.FieldGrant: e.GrantID, audit.FieldLease: e.LeaseID,
	})
}

// gatewayRecorder turns one job's gateway decisions into audit records.
type gatewayRecorder struct {
	trail *jobTrail
	// grants names the job's proxy credentials by grant id: the gateway
	// knows grants, the trail names secrets.
	grants map[string]grantInfo
	used   map[string]bool // grant+host already recorded as credential_used
}

type grantInfo struct{ secret, fingerprint string }

func newGatewayRecorder(jt *jobTrail, jc *jobCredentials) *gatewayRecorder {
	g := &gatewayRecorder{trail: jt, grants: map[string]grantInfo{}, used: map[string]bool{}}
	if jc != nil && jc.creds != nil {
		for _, d := range jc.creds.Creds {
			g.grants[d.GrantID] = grantInfo{secret: d.Secret, fingerprint: d.Fingerprint}
		}
	}
	return g
}

// record is the gateway's event sink for the job: the gateway calls it
// from the job's queue goroutine with everything queued, and the batch is
// written to the trail with one fsync.
func (g *gatewayRecorder) record(evs []netpolicy.Event) {
	recs := make([]audit.Event, 0, len(evs))
	for _, e := range evs {
		switch e.Kind {
		case netpolicy.KindProxied:
			gi := g.grants[e.GrantID]
			if e.GrantID != "" {
				if key := e.GrantID + " " + e.Host; !g.used[key] {
					g.used[key] = true
					recs = append(recs, audit.NewCredentialUsed(gi.secret, e.GrantID, gi.fingerprint, e.Host))
				}
			}
			pr := audit.NewProxiedRequest(e.Method, e.Host, e.Path, e.Status, e.Bytes, e.Duration, gi.secret)
			if e.CertGrantID != "" {
				ci := g.grants[e.CertGrantID]
				if key := e.CertGrantID + " " + e.Host; !g.used[key] {
					g.used[key] = true
					recs = append(recs, audit.NewCredentialUsed(ci.secret, e.CertGrantID, e.CertFingerprint, e.Host))
				}
				pr.Fields[audit.FieldClientCert] = e.CertFingerprint
				pr.Fields[audit.FieldCertSecret] = ci.secret
			}
			recs = append(recs, pr)
		case netpolicy.KindDropped:
			recs = append(recs, audit.NewEventsDropped(e.Dropped, e.Reason))
		default:
			recs = append(recs, gatewayEvent(e))
		}
	}
	if _, err := g.trail.t.LogBatch(context.Background(), recs); err != nil {
		g.trail.log.Error("audit records lost", "type", "gateway", "count", len(recs), "error", err)
	}
}

// gatewayEvent turns a gateway decision (other than a proxied request)
// into an audit record.
func gatewayEvent(e netpolicy.Event) audit.Event {
	switch e.Kind {
	case netpolicy.KindDNS:
		return audit.NewDNS(e.Host, e.Method, e.Verdict, e.Reason)
	case netpolicy.KindAlert:
		return audit.NewAlert("gateway", e.Reason, audit.Fields{
			audit.FieldHost: e.Host, audit.FieldPort: e.Port, audit.FieldGrant: e.GrantID, "addr": e.Addr,
		})
	}
	return audit.NewEgress(e.Kind, e.Host, e.Port, e.Verdict, e.Reason, e.Bytes, e.Duration)
}

// sealedFile reports whether the trail file at path ends with its seal.
func sealedFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return false
	}
	// The seal is the last line; it is well under 4 KiB.
	n := min(fi.Size(), 4096)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, fi.Size()-n); err != nil {
		return false
	}
	buf = bytes.TrimRight(buf, "\n")
	last := buf[bytes.LastIndexByte(buf, '\n')+1:]
	return bytes.Contains(last, []byte(`"type":"seal"`))
}
