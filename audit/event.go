package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// EventType names what a record reports.
type EventType string

// Event types. docs/audit.md shows an example record of each.
const (
	JobAccepted            EventType = "job_accepted"
	GrantDecision          EventType = "grant_decision"
	CredentialMinted       EventType = "credential_minted"
	CredentialUsed         EventType = "credential_used"
	CredentialRevoked      EventType = "credential_revoked"
	CredentialRevokeFailed EventType = "credential_revoke_failed"
	EgressAllowed          EventType = "egress_allowed"
	EgressDenied           EventType = "egress_denied"
	DNSAnswered            EventType = "dns_answered"
	DNSRefused             EventType = "dns_refused"
	ProxiedRequest         EventType = "proxied_request"
	StepStarted            EventType = "step_started"
	StepContainer          EventType = "step_container"
	StepFinished           EventType = "step_finished"
	JobFinished            EventType = "job_finished"
	RunnerCrashed          EventType = "runner_crashed"
	Alert                  EventType = "alert"
	EventsDropped          EventType = "events_dropped"
	LeakFound              EventType = "leak_found"
	Seal                   EventType = "seal"
)

// EventTypes lists every event type, in lifecycle order.
var EventTypes = []EventType{
	JobAccepted, GrantDecision, CredentialMinted, CredentialUsed, CredentialRevoked,
	CredentialRevokeFailed, EgressAllowed, EgressDenied, DNSAnswered, DNSRefused,
	ProxiedRequest, StepStarted, StepContainer, StepFinished, JobFinished, RunnerCrashed, Alert, EventsDropped, LeakFound, Seal,
}

// Field names used by the constructors below (and by readers such as
// `airlock audit suggest-policy`).
const (
	FieldSource      = "source"      // job_accepted: gitlab | github | local
	FieldInstance    = "instance"    // job_accepted: the coordinator's URL (absent for local jobs)
	FieldRepo        = "repo"        // job_accepted, grant_decision
	FieldRef         = "ref"         // job_accepted, grant_decision
	FieldSHA         = "sha"         // job_accepted
	FieldProtected   = "protected"   // job_accepted, grant_decision
	FieldEnvironment = "environment" // job_accepted, grant_decision
	FieldImage       = "image"       // job_accepted, step_container
	FieldImageID     = "image_id"    // step_container: the image's id (digest)
	FieldName        = "name"        // step_container: which of the step's containers

	FieldSecret      = "secret"      // credential events, grant_decision: the secret's name
	FieldGrant       = "grant"       // credential events, grant_decision: grant id
	FieldLease       = "lease"       // credential events: backend lease / accessor / token id
	FieldFingerprint = "fingerprint" // credential events: short hash, never the value
	FieldDelivery    = "delivery"    // env | file | proxy
	FieldExpires     = "expires"     // credential_minted: RFC 3339
	FieldDecision    = "decision"    // grant_decision: granted | denied
	FieldError       = "error"       // credential_revoke_failed
	FieldAttempt     = "attempt"     // credential_revoke_failed

	FieldKind     = "kind"    // egress: dns | http | connect | tls; alert: what
	FieldHost     = "host"    // egress, dns, proxied_request, credential_used
	FieldPort     = "port"    // egress
	FieldVerdict  = "verdict" // egress: allowed | denied
	FieldReason   = "reason"  // why (denials, job end, crash, seal)
	FieldBytes    = "bytes"   // egress, proxied_request
	FieldDuration = "duration_ms"
	FieldQType    = "qtype"  // dns: A, AAAA, TXT, ...
	FieldMethod   = "method" // proxied_request
	FieldPath     = "path"   // proxied_request
	FieldStatus   = "status" // proxied_request: HTTP status

	FieldStep    = "step"    // step events
	FieldExit    = "exit"    // step_finished, job_finished
	FieldState   = "state"   // job_finished: success | failed | canceled | timeout
	FieldMessage = "message" // alert
	FieldDropped = "dropped" // events_dropped: gateway event kind -> count
	FieldTotal   = "total"   // events_dropped: sum of dropped
	FieldFile    = "file"    // leak_found
	FieldLine    = "line"    // leak_found
	FieldCommit  = "commit"  // leak_found
	FieldRule    = "rule"    // leak_found: gitleaks rule id or stored-secret
	FieldMatch   = "match"   // leak_found: the matched text, credential masked
	FieldMode    = "mode"    // leak_found: block | warn

	FieldClientCert = "client_cert" // proxied_request: SHA-256 fingerprint of the client certificate presented
	FieldCertSecret = "cert_secret" // proxied_request: the client certificate's secret

	FieldTruncatedBytes = "truncated_bytes" // runner_crashed, seal
	FieldRedacted       = "redacted"        // set when the Mask hook changed a string

	// Seal fields.
	FieldCount      = "count"      // records before the seal
	FieldFinalHash  = "final_hash" // hash of record number count ("" when 0)
	FieldTreeHash   = "tree_hash"  // RFC 6962 tree hash (base64) over the record hashes
	FieldCheckpoint = "checkpoint" // signed note whose text is the checkpoint
	FieldKey        = "key"        // the signer's verifier key (informational)
)

// Verdicts and decisions.
const (
	VerdictAllowed = "allowed"
	VerdictDenied  = "denied"
	DecisionGrant  = "granted"
	DecisionDeny   = "denied"
)

// Egress kinds.
const (
	KindDNS     = "dns"
	KindHTTP    = "http"
	KindConnect = "connect"
	KindTLS     = "tls"
)

// Fields are the event-specific keys of a record. Values must encode as
// JSON; strings pass through the trail's Mask hook.
type Fields map[string]any

// Event is a type with its fields, as built by the constructors below.
type Event struct {
	Type   EventType
	Fields Fields
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

// NewJobAccepted reports a job taken from a source; instance is the
// coordinator it came from ("" for local jobs: the field is left out), for
// the same repo path on two instances is two projects.
func NewJobAccepted(source, instance, repo, ref, sha string, protected bool, environment, image string) Event {
	f := Fields{
		FieldSource: source, FieldRepo: repo, FieldRef: ref, FieldSHA: sha,
		FieldProtected: protected, FieldEnvironment: environment, FieldImage: image,
	}
	if instance != "" {
		f[FieldInstance] = instance
	}
	return Event{JobAccepted, f}
}

// NewGrantDecision reports whether a declared secret was granted, by which
// grant (empty when denied), and why.
func NewGrantDecision(secret, grantID, decision, delivery, reason string) Event {
	return Event{GrantDecision, Fields{
		FieldSecret: secret, FieldGrant: grantID, FieldDecision: decision,
		FieldDelivery: delivery, FieldReason: reason,
	}}
}

// NewCredentialMinted reports a credential minted for the job. hashPrefix
// is a short fingerprint (see Fingerprint), never the value.
func NewCredentialMinted(secret, grantID, leaseID, hashPrefix, delivery string, expires time.Time) Event {
	f := Fields{
		FieldSecret: secret, FieldGrant: grantID, FieldLease: leaseID,
		FieldFingerprint: hashPrefix, FieldDelivery: delivery,
	}
	if !expires.IsZero() {
		f[FieldExpires] = expires.UTC().Format(time.RFC3339)
	}
	return Event{CredentialMinted, f}
}

// NewCredentialUsed reports a credential swapped in by the gateway.
func NewCredentialUsed(secret, grantID, hashPrefix, host string) Event {
	return Event{CredentialUsed, Fields{
		FieldSecret: secret, FieldGrant: grantID, FieldFingerprint: hashPrefix, FieldHost: host,
	}}
}

// NewCredentialRevoked reports a revoked credential.
func NewCredentialRevoked(secret, grantID, leaseID, hashPrefix string) Event {
	return Event{CredentialRevoked, Fields{
		FieldSecret: secret, FieldGrant: grantID, FieldLease: leaseID, FieldFingerprint: hashPrefix,
	}}
}

// NewCredentialRevokeFailed reports a failed revocation attempt (the
// sweeper retries it). The error text passes through the Mask hook.
func NewCredentialRevokeFailed(secret, grantID, leaseID string, attempt int, err error) Event {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	return Event{CredentialRevokeFailed, Fields{
		FieldSecret: secret, FieldGrant: grantID, FieldLease: leaseID,
		FieldAttempt: attempt, FieldError: msg,
	}}
}

// NewEgress reports a connection attempt through the gateway; the type is
// egress_allowed or egress_denied after verdict.
func NewEgress(kind, host string, port int, verdict, reason string, bytes int64, dur time.Duration) Event {
	t := EgressAllowed
	if verdict != VerdictAllowed {
		t = EgressDenied
	}
	return Event{t, Fields{
		FieldKind: kind, FieldHost: host, FieldPort: port, FieldVerdict: verdict,
		FieldReason: reason, FieldBytes: bytes, FieldDuration: ms(dur),
	}}
}

// NewDNS reports a DNS question answered (verdict allowed) or refused.
func NewDNS(name, qtype, verdict, reason string) Event {
	t := DNSAnswered
	if verdict != VerdictAllowed {
		t = DNSRefused
	}
	return Event{t, Fields{
		FieldKind: KindDNS, FieldHost: name, FieldQType: qtype, FieldVerdict: verdict, FieldReason: reason,
	}}
}

// NewProxiedRequest reports a request the gateway terminated and forwarded
// with a real credential: never bodies, headers or values.
func NewProxiedRequest(method, host, path string, status int, bytes int64, dur time.Duration, secret string) Event {
	return Event{ProxiedRequest, Fields{
		FieldMethod: method, FieldHost: host, FieldPath: path, FieldStatus: status,
		FieldBytes: bytes, FieldDuration: ms(dur), FieldSecret: secret,
	}}
}

// NewStepStarted reports a step starting.
func NewStepStarted(name string) Event {
	return Event{StepStarted, Fields{FieldStep: name}}
}

// NewStepContainer reports that step runs a command in a container of
// its own image beside the job's (a GitHub Docker action): which code ran.
func NewStepContainer(step, name, image, imageID string) Event {
	return Event{StepContainer, Fields{FieldStep: step, FieldName: name, FieldImage: image, FieldImageID: imageID}}
}

// NewStepFinished reports a step's exit code and duration.
func NewStepFinished(name string, exit int, dur time.Duration) Event {
	return Event{StepFinished, Fields{FieldStep: name, FieldExit: exit, FieldDuration: ms(dur)}}
}

// NewJobFinished reports the job's final state.
func NewJobFinished(state string, exit int, dur time.Duration, reason string) Event {
	return Event{JobFinished, Fields{FieldState: state, FieldExit: exit, FieldDuration: ms(dur), FieldReason: reason}}
}

// NewRunnerCrashed is appended by Recover to a trail whose runner died.
func NewRunnerCrashed(reason string, truncatedBytes int64) Event {
	return Event{RunnerCrashed, Fields{FieldReason: reason, FieldTruncatedBytes: truncatedBytes}}
}

// NewAlert reports something an operator should look at (for example a
// surrogate credential seen on the wrong host).
func NewAlert(kind, message string, extra Fields) Event {
	f := Fields{}
	for k, v := range extra {
		f[k] = v
	}
	f[FieldKind] = kind
	f[FieldMessage] = message
	return Event{Alert, f}
}

// Fingerprint returns a short, domain-separated hash of a credential value
// (12 hex digits) to identify it in records. Use it only for high-entropy
// values: a short hash of a guessable value can be confirmed by brute force.
func Fingerprint(value string) string {
	sum := sha256.Sum256([]byte("airlock credential fingerprint\n" + value))
	return hex.EncodeToString(sum[:6])
}

// NewEventsDropped reports gateway decisions that were made (and counted in
// the job's egress summary) but could not be queued for the trail in time:
// counts per event kind, so that the trail and the summary still agree.
func NewEventsDropped(counts map[string]int64, reason string) Event {
	m := make(map[string]any, len(counts))
	var total int64
	for k, v := range counts {
		m[k] = v
		total += v
	}
	return Event{EventsDropped, Fields{FieldDropped: m, FieldTotal: total, FieldReason: reason}}
}

// NewLeakFound reports a credential found in what the job's change adds,
// before any of its code ran: where, by which rule (or which stored
// secret, by name), the matched text with the credential masked, and the
// repository's leak-scan mode.
func NewLeakFound(commit, file string, line int, rule, secret, match, mode string) Event {
	return Event{LeakFound, Fields{
		FieldCommit: commit, FieldFile: file, FieldLine: line, FieldRule: rule,
		FieldSecret: secret, FieldMatch: match, FieldMode: mode,
	}}
}
