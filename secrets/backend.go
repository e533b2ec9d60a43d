package secrets

import (
	"context"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// Backend mints and revokes credentials of one kind (builtin, vault,
// githubapp). The broker calls it; implementations live in subpackages.
//
// Contract:
//   - Mint returns a credential and a Handle that is enough, together with
//     the secret's stored config, to revoke it later, also from another
//     process after a crash. Handle "" means there is nothing to revoke.
//     When Mint fails it leaves nothing live.
//   - Revoke is idempotent: revoking a credential that is already revoked
//     or has expired succeeds. A returned error means "try again later".
//   - Neither puts a secret value or handle in an error message.
//   - Both are safe for concurrent use and honour ctx.
type Backend interface {
	Mint(ctx context.Context, req MintRequest) (Credential, error)
	Revoke(ctx context.Context, req RevokeRequest) error
}

// SecretValidator is implemented by backends that can check a secret's
// params (and the shape of its value, e.g. a PEM key) before it is stored;
// `airlock secret set` calls it.
type SecretValidator interface {
	ValidateSecret(sec Secret) error
}

// MintRequest is everything a backend knows when minting.
type MintRequest struct {
	Secret Secret // decrypted
	Grant  Grant
	Job    JobIdentity
	TTL    time.Duration // the credential's lifetime: the grant's TTL capped at MaxTTL
	MaxTTL time.Duration // job timeout + slack; nothing may outlive it
}

// RevokeRequest is everything a backend knows when revoking.
type RevokeRequest struct {
	Secret Secret // decrypted
	Handle string
}

// Credential is a minted credential. Value is secret; so may Handle be
// (a GitHub token is its own handle), which is why the journal stores
// handles encrypted.
type Credential struct {
	Value   []byte
	Handle  string
	Expires time.Time // zero: does not expire
}

// Builtin is the backend of static secrets stored in the state store.
// Mint hands out the stored value; there is nothing to revoke.
type Builtin struct{}

// Mint returns a copy of the stored value with an empty handle.
func (Builtin) Mint(_ context.Context, req MintRequest) (Credential, error) {
	return Credential{Value: append([]byte(nil), req.Secret.Value...)}, nil
}

// Revoke does nothing: a static value cannot be revoked.
func (Builtin) Revoke(context.Context, RevokeRequest) error { return nil }

// Delivered is one credential as handed to a job.
type Delivered struct {
	Secret      string
	GrantID     string
	LeaseID     string
	Backend     string
	Fingerprint string // keyed fingerprint of the real value
	Var         string
	Delivery    job.Delivery
	// Value is what the job receives: the credential for env and file
	// delivery, the surrogate for proxy delivery.
	Value []byte
	// Real is the real credential for proxy delivery, for the gateway
	// only; nil otherwise.
	Real    []byte
	Hosts   []string // proxy: hosts where the gateway swaps surrogate for Real
	Header  string   // proxy: header template containing {{value}}
	Expires time.Time
}

// HeaderLine returns the header name and value the gateway sets for a
// proxy delivery: the template with {{value}} replaced by Real.
func (d *Delivered) HeaderLine() (name, value string) {
	tmpl := d.Header
	if tmpl == "" {
		tmpl = DefaultHeader
	}
	name, value, _ = strings.Cut(tmpl, ":")
	return strings.TrimSpace(name), strings.ReplaceAll(strings.TrimSpace(value), "{{value}}", string(d.Real))
}

// JobCredentials are the credentials minted for one job.
type JobCredentials struct {
	JobID string
	Creds []Delivered
}

// MaskValues returns every value the job's output must never show: each
// credential, each surrogate, each real value behind a surrogate.
func (c *JobCredentials) MaskValues() [][]byte {
	var out [][]byte
	for _, d := range c.Creds {
		if len(d.Value) > 0 {
			out = append(out, d.Value)
		}
		if len(d.Real) > 0 {
			out = append(out, d.Real)
		}
	}
	return out
}

// Wipe overwrites every value in memory; call it once the job is done.
func (c *JobCredentials) Wipe() {
	for i := range c.Creds {
		clear(c.Creds[i].Value)
		clear(c.Creds[i].Real)
	}
}
