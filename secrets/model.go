// Package secrets holds Airlock's state store (encrypted secrets, grants,
// egress ceilings, the lease journal and job records), the grant engine
// that decides which job may use which secret, and the credential broker
// that mints credentials for a job and revokes them when it ends.
//
// Backends (builtin here; Vault and GitHub App in subpackages) sit behind
// the small Backend interface. Nothing in this package ever logs, returns
// in an error, or emits in an event a secret value: credentials are named
// by grant id, lease id and a short keyed fingerprint.
package secrets

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets/mask"
)

// Backend names.
const (
	BackendBuiltin   = "builtin"
	BackendVault     = "vault"
	BackendGitHubApp = "githubapp"
)

// MinValueLen is the shortest secret value the store accepts: the masker
// cannot reliably mask shorter values without masking ordinary output.
const MinValueLen = mask.MinLength

// DefaultHeader is the header template of a proxy grant without one.
const DefaultHeader = "Authorization: Bearer {{value}}"

// Secret is a named secret. Params are the backend's non-secret settings
// (Vault address, path, role id; GitHub App id, installation id); Value is
// the secret material (the builtin value, a Vault token or AppRole
// secret_id, a GitHub App private key). Value is only ever stored
// encrypted.
type Secret struct {
	Name    string
	Backend string
	Created time.Time
	Params  map[string]string
	Value   []byte
}

// SecretInfo is what may be shown about a secret: never its value.
type SecretInfo struct {
	Name    string
	Backend string
	Created time.Time
	Params  map[string]string
}

// Validate returns every problem of the secret at once.
func (s *Secret) Validate() error {
	var errs []error
	if !job.ValidSecretName(s.Name) {
		errs = append(errs, fmt.Errorf("name %q: must be 1-128 letters, digits, '.', '_' or '-'", s.Name))
	}
	switch s.Backend {
	case BackendBuiltin, BackendVault, BackendGitHubApp:
	default:
		errs = append(errs, fmt.Errorf("backend %q: must be builtin, vault or githubapp", s.Backend))
	}
	if len(s.Value) < MinValueLen {
		errs = append(errs, fmt.Errorf("value: %d bytes is too short; at least %d are needed so that the value can be masked in job output without masking ordinary text", len(s.Value), MinValueLen))
	}
	return errors.Join(errs...)
}

// Grant allows jobs matching its repo, ref, protection, environment and
// source patterns to receive a secret, delivered one way.
type Grant struct {
	ID            string
	Secret        string
	Repo          string   // glob: '*' within a path segment, '**' across segments
	Refs          []string // globs; empty = any ref
	ProtectedOnly bool
	Envs          []string // globs; empty = any environment (including none)
	Source        job.Source
	// Instance, if set, restricts the grant to jobs of one coordinator
	// instance (a GitLab URL, e.g. "https://gitlab.example.com"): the same
	// repo path on another instance is another project.
	Instance string
	// Events limits the grant to jobs triggered by these events (globs,
	// GitHub's event_name); empty = any event.
	Events []string
	// AllowForks lets jobs that run code from a fork (job.Job.Fork) use
	// the grant; by default they are refused.
	AllowForks bool
	Delivery   job.Delivery // env, file or proxy
	Var        string       // default variable name; the job's declaration wins
	TTL        time.Duration
	Hosts      []string          // proxy: hosts the real credential is bound to
	Header     string            // proxy: header template containing {{value}}
	Scope      map[string]string // backend specific (vault policies, github permissions)
	Created    time.Time
}

// Validate returns every problem of the grant at once, each naming its key.
func (g *Grant) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !job.ValidSecretName(g.Secret) {
		add("secret %q: not a valid secret name", g.Secret)
	}
	if err := validPattern(g.Repo); err != nil {
		add("repo %q: %v", g.Repo, err)
	}
	for _, r := range g.Refs {
		if err := validPattern(r); err != nil {
			add("ref %q: %v", r, err)
		}
	}
	for _, e := range g.Envs {
		if err := validPattern(e); err != nil {
			add("env %q: %v", e, err)
		}
	}
	if g.Source != "" && !g.Source.Valid() {
		add("source %q: must be gitlab, github or local", g.Source)
	}
	for _, e := range g.Events {
		if err := validPattern(e); err != nil {
			add("event %q: %v", e, err)
		}
	}
	if g.Instance != "" && !validInstance(g.Instance) {
		add("instance %q: must be the coordinator's http(s) URL", g.Instance)
	}
	switch g.Delivery {
	case job.DeliverEnv, job.DeliverFile:
		if len(g.Hosts) > 0 {
			add("host: only proxy delivery binds a credential to hosts")
		}
		if g.Header != "" {
			add("header: only proxy delivery uses a header template")
		}
	case job.DeliverProxy:
		if len(g.Hosts) == 0 {
			add("host: proxy delivery needs at least one host the credential is bound to")
		}
		if g.Header != "" && !strings.Contains(g.Header, "{{value}}") {
			add("header %q: must contain {{value}}", g.Header)
		}
		if g.Header != "" && !strings.Contains(g.Header, ":") {
			add("header %q: must look like 'Name: template'", g.Header)
		}
	case job.DeliverMTLS:
		if len(g.Hosts) == 0 {
			add("host: mtls delivery needs at least one host the certificate is presented to")
		}
		if g.Header != "" {
			add("header: mtls delivery sends no header (grant a proxy credential for the same host as well)")
		}
	default:
		add("deliver %q: must be env, file, proxy or mtls", g.Delivery)
	}
	for _, h := range g.Hosts {
		if h == "" || strings.ContainsAny(h, " /\t") {
			add("host %q: must be a host name, optionally with :port", h)
		}
	}
	if g.Var != "" && !job.ValidVarName(g.Var) {
		add("var %q: not a valid variable name", g.Var)
	}
	if g.TTL < 0 {
		add("ttl: must not be negative")
	}
	for k := range g.Scope {
		if k == "" {
			add("scope: empty key")
		}
	}
	return errors.Join(errs...)
}

// HeaderTemplate is the grant's header template, or DefaultHeader.
func (g *Grant) HeaderTemplate() string {
	if g.Header == "" {
		return DefaultHeader
	}
	return g.Header
}

// EgressPolicy is an admin's egress ceiling for repositories matching
// RepoPattern: a job may reach at most these host:port entries.
//
// Ceilings do not add up: for a repository the most specific matching
// pattern wins (see Specificity), so an admin can narrow a broad
// `group/**` ceiling for one project with an exact entry.
type EgressPolicy struct {
	RepoPattern string
	// Instance, if set, restricts the ceiling to jobs of one coordinator
	// instance (a GitLab or GitHub URL), as a grant's does: the same repo
	// path on another instance is another project. One pattern may have a
	// ceiling per instance and one for any instance.
	Instance string `json:",omitempty"`
	Egress   []string
	Audit    bool // audit mode: every name is let through (still only via the gateway) and recorded
	// LeakScan is the repository's leak-scan mode: "block", "warn" or
	// "off" ("" is warn).
	LeakScan string `json:",omitempty"`
	Created  time.Time
}

// Validate returns the problems of the policy's repo pattern. The egress
// entries are netpolicy's to parse: the command that takes them from an
// admin checks them (netpolicy.ParseEntries) before SetPolicy, and the
// runner parses them again, failing the job, when it applies them.
func (p *EgressPolicy) Validate() error {
	var errs []error
	if err := validPattern(p.RepoPattern); err != nil {
		errs = append(errs, fmt.Errorf("repo %q: %w", p.RepoPattern, err))
	}
	if p.Instance != "" && !validInstance(p.Instance) {
		errs = append(errs, fmt.Errorf("instance %q: must be the coordinator's http(s) URL", p.Instance))
	}
	switch p.LeakScan {
	case "", "block", "warn", "off":
	default:
		errs = append(errs, fmt.Errorf("leak scan %q: want block, warn or off", p.LeakScan))
	}
	return errors.Join(errs...)
}

// JobIdentity is what the grant engine and the backends know of a job.
type JobIdentity struct {
	JobID       string
	Repo        string
	Ref         string
	Protected   bool
	Environment string
	Source      job.Source
	Instance    string // the coordinator instance (GitLab URL); "" for local jobs
	Timeout     time.Duration
	Event       string // what triggered the job (GitHub event_name)
	Fork        bool   // the job runs code from a fork
}

// IdentityOf returns the identity of j.
func IdentityOf(j *job.Job) JobIdentity {
	return JobIdentity{JobID: j.ID, Repo: j.Repo, Ref: j.Ref, Protected: j.Protected,
		Environment: j.Environment, Source: j.Source, Instance: j.Instance, Timeout: j.Timeout, Event: j.Event, Fork: j.Fork}
}

const idAlphabet = "abcdefghijkmnpqrstuvwxyz23456789"

// newID returns n random characters of an unambiguous alphabet.
func newID(n int) string {
	return randomString(idAlphabet, n)
}

func randomString(alphabet string, n int) string {
	out := make([]byte, n)
	buf := make([]byte, 1)
	limit := 256 - 256%len(alphabet)
	for i := 0; i < n; {
		if _, err := rand.Read(buf); err != nil {
			panic(fmt.Sprintf("reading random bytes: %v", err)) // crypto/rand never fails on Linux
		}
		if int(buf[0]) >= limit {
			continue
		}
		out[i] = alphabet[int(buf[0])%len(alphabet)]
		i++
	}
	return string(out)
}

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// SurrogatePrefix starts every surrogate, so the masker and the gateway
// recognise one.
const SurrogatePrefix = "airlock_sur_"

// NewSurrogate returns a fresh random surrogate: SurrogatePrefix and 32
// base62 characters (190 bits).
func NewSurrogate() string { return SurrogatePrefix + randomString(base62, 32) }

// validInstance reports whether s looks like a coordinator URL.
func validInstance(s string) bool {
	return (strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://")) &&
		!strings.ContainsAny(s, " \t\r\n?#@")
}

// policyKey is where a ceiling is stored: its pattern, after its
// instance if it has one (neither holds a space).
func policyKey(pattern, instance string) string {
	if instance == "" {
		return pattern
	}
	return instanceKey(instance) + " " + pattern
}

// Scope names the repositories a ceiling applies to, for messages.
func (p EgressPolicy) Scope() string {
	if p.Instance == "" {
		return p.RepoPattern
	}
	return p.RepoPattern + " on " + p.Instance
}

// sameInstance compares coordinator URLs, ignoring a trailing slash and
// the case of scheme and host.
func sameInstance(a, b string) bool { return instanceKey(a) == instanceKey(b) }

// instanceKey is an instance URL as compared and stored: without a
// trailing slash, in lower case.
func instanceKey(s string) string { return strings.ToLower(strings.TrimRight(s, "/")) }
