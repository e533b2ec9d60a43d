package netpolicy

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"
	"time"
)

// Credential is a credential delivered by surrogate: the job holds only
// Surrogate; the gateway swaps it for Value in requests to Hosts.
//
// Template decides what the configured Header becomes when it carries the
// surrogate (directly, or inside Basic auth credentials):
//
//	""                   the surrogate is replaced by Value where it appears
//	"Bearer {{value}}"   the header is set to the template, {{value}} = Value
//	"x-access-token"     (no {{value}}) Basic auth mode: the header is set to
//	                     "Basic " + base64(template + ":" + Value)
type Credential struct {
	GrantID   string
	LeaseID   string
	Surrogate string
	// Hosts the credential is bound to: exact names or "*.suffix".
	Hosts    []string
	Header   string // default "Authorization"
	Template string
	Value    []byte
	// ClientCert, when set, makes this an mTLS credential: the job holds
	// nothing at all, and the gateway terminates the job's TLS to a bound
	// host and presents this certificate on the upstream connection.
	// Surrogate, Header, Template and Value are unused.
	ClientCert *tls.Certificate
}

// IsMTLS reports whether c is a client-certificate credential.
func (c *Credential) IsMTLS() bool { return c.ClientCert != nil }

// CertFingerprint is the SHA-256 of the client certificate (DER), as
// "sha256:" and 16 hex digits, for the audit trail.
func (c *Credential) CertFingerprint() string {
	if c.ClientCert == nil || len(c.ClientCert.Certificate) == 0 {
		return ""
	}
	sum := sha256.Sum256(c.ClientCert.Certificate[0])
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// minSurrogateLen keeps surrogates long enough not to match by accident.
const minSurrogateLen = 12

// retiredSurrogateTTL is how long the surrogates of an ended job are still
// recognized (and raised as alerts) after Unregister.
const retiredSurrogateTTL = 24 * time.Hour

func (c *Credential) header() string {
	if c.Header == "" {
		return "Authorization"
	}
	return textproto.CanonicalMIMEHeaderKey(c.Header)
}

func (c *Credential) validate() error {
	var errs []error
	if c.IsMTLS() {
		if len(c.ClientCert.Certificate) == 0 || c.ClientCert.PrivateKey == nil {
			errs = append(errs, errors.New("client certificate without certificate or key"))
		}
	} else if len(c.Surrogate) < minSurrogateLen {
		errs = append(errs, fmt.Errorf("surrogate shorter than %d characters", minSurrogateLen))
	}
	if len(c.Hosts) == 0 {
		errs = append(errs, errors.New("no bound hosts"))
	}
	for _, h := range c.Hosts {
		if err := checkHostname(strings.TrimPrefix(normalizeHost(h), "*.")); err != nil {
			errs = append(errs, fmt.Errorf("bound host %q: %w", h, err))
		}
	}
	if len(c.Value) == 0 && !c.IsMTLS() {
		errs = append(errs, errors.New("empty value"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("validating credential of grant %s: %w", c.GrantID, err)
	}
	return nil
}

func (c *Credential) boundTo(host string) bool {
	host = normalizeHost(host)
	for _, h := range c.Hosts {
		h = normalizeHost(h)
		if suffix, ok := strings.CutPrefix(h, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
		} else if h == host {
			return true
		}
	}
	return false
}

// inject rewrites the configured header of h, replacing the surrogate.
func (c *Credential) inject(h http.Header) {
	name := c.header()
	vals := h.Values(name)
	if len(vals) == 0 {
		return
	}
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		if !strings.Contains(v, c.Surrogate) && !basicContains(v, c.Surrogate) {
			out = append(out, v)
			continue
		}
		out = append(out, c.render(v))
	}
	h[name] = out
}

func (c *Credential) render(v string) string {
	switch {
	case c.Template == "":
		if user, pass, ok := decodeBasic(v); ok && strings.Contains(user+":"+pass, c.Surrogate) {
			creds := strings.ReplaceAll(user+":"+pass, c.Surrogate, string(c.Value))
			return "Basic " + base64.StdEncoding.EncodeToString([]byte(creds))
		}
		return strings.ReplaceAll(v, c.Surrogate, string(c.Value))
	case strings.Contains(c.Template, "{{value}}"):
		return strings.ReplaceAll(c.Template, "{{value}}", string(c.Value))
	default:
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.Template+":"+string(c.Value)))
	}
}

func decodeBasic(v string) (user, pass string, ok bool) {
	const prefix = "basic "
	if len(v) < len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v[len(prefix):]))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(raw), ":")
}

func basicContains(v, s string) bool {
	user, pass, ok := decodeBasic(v)
	return ok && strings.Contains(user+":"+pass, s)
}

// surrogateOwner records which job a surrogate belongs to.
type surrogateOwner struct {
	job     string
	cred    *Credential
	retired time.Time // zero while the job is registered
}

// surrogateHit is one surrogate found in a request.
type surrogateHit struct {
	surrogate string
	header    string // canonical header name, "" when found in the URL or Host
}

// findSurrogates returns every known surrogate in r's header values
// (including decoded Basic credentials), URL and Host.
func (g *Gateway) findSurrogates(r *http.Request) []surrogateHit {
	g.surMu.RLock()
	defer g.surMu.RUnlock()
	if len(g.surrogates) == 0 {
		return nil
	}
	var hits []surrogateHit
	seen := map[surrogateHit]bool{}
	add := func(h surrogateHit) {
		if !seen[h] {
			seen[h] = true
			hits = append(hits, h)
		}
	}
	for s := range g.surrogates {
		for name, vals := range r.Header {
			for _, v := range vals {
				if strings.Contains(v, s) || basicContains(v, s) {
					add(surrogateHit{surrogate: s, header: textproto.CanonicalMIMEHeaderKey(name)})
				}
			}
		}
		if strings.Contains(r.URL.String(), s) || strings.Contains(r.Host, s) {
			add(surrogateHit{surrogate: s})
		}
	}
	return hits
}

// surrogateVerdict decides what to do with the surrogates found in a request
// from job j to host. intercepted is false for plain HTTP. It returns the
// credentials to inject, or an alert (reason and the owning grant).
func (g *Gateway) surrogateVerdict(j *jobState, host string, hits []surrogateHit, intercepted bool) (inject []*Credential, reason, grant string) {
	g.surMu.RLock()
	defer g.surMu.RUnlock()
	for _, h := range hits {
		o, ok := g.surrogates[h.surrogate]
		if !ok {
			continue
		}
		grant = o.cred.GrantID
		switch {
		case !o.retired.IsZero():
			return nil, fmt.Sprintf("surrogate of job %s presented after its job ended", o.job), grant
		case o.job != j.cfg.JobID:
			return nil, fmt.Sprintf("surrogate of another job (%s) presented", o.job), grant
		case !o.cred.boundTo(host):
			return nil, fmt.Sprintf("surrogate presented to %s, which it is not bound to", host), grant
		case !intercepted:
			return nil, "surrogate presented over plain HTTP", grant
		case h.header != o.cred.header():
			where := "the URL"
			if h.header != "" {
				where = "header " + h.header
			}
			return nil, fmt.Sprintf("surrogate presented in %s instead of %s", where, o.cred.header()), grant
		}
		inject = append(inject, o.cred)
	}
	if len(inject) > 0 {
		grant = inject[0].GrantID
	}
	return inject, "", grant
}

// addSurrogates indexes the job's surrogates; it fails if one is known.
func (g *Gateway) addSurrogates(jobID string, creds []Credential) error {
	g.surMu.Lock()
	defer g.surMu.Unlock()
	now := time.Now()
	for s, o := range g.surrogates {
		if !o.retired.IsZero() && now.Sub(o.retired) > retiredSurrogateTTL {
			delete(g.surrogates, s)
		}
	}
	for i := range creds {
		if creds[i].IsMTLS() {
			continue
		}
		if _, dup := g.surrogates[creds[i].Surrogate]; dup {
			return fmt.Errorf("registering credential of grant %s: surrogate already in use", creds[i].GrantID)
		}
	}
	for i := range creds {
		c := creds[i]
		if c.IsMTLS() {
			continue
		}
		g.surrogates[c.Surrogate] = &surrogateOwner{job: jobID, cred: &c}
	}
	return nil
}

// retireSurrogates keeps the job's surrogates known, marked as ended.
func (g *Gateway) retireSurrogates(jobID string) {
	g.surMu.Lock()
	defer g.surMu.Unlock()
	now := time.Now()
	for _, o := range g.surrogates {
		if o.job == jobID && o.retired.IsZero() {
			o.retired = now
		}
	}
}

// dropSurrogates forgets the active surrogates of a job whose registration
// failed.
func (g *Gateway) dropSurrogates(jobID string) {
	g.surMu.Lock()
	defer g.surMu.Unlock()
	for s, o := range g.surrogates {
		if o.job == jobID && o.retired.IsZero() {
			delete(g.surrogates, s)
		}
	}
}

// clientCert returns the job's mTLS credential bound to host, if any.
func (j *jobState) clientCert(host string) *Credential {
	for i := range j.cfg.Policy.Credentials {
		if c := &j.cfg.Policy.Credentials[i]; c.IsMTLS() && c.boundTo(host) {
			return c
		}
	}
	return nil
}

// mtlsTransport returns (making it once) the transport that presents c's
// certificate upstream; it is the job's transport otherwise unchanged.
func (j *jobState) mtlsTransport(c *Credential) *http.Transport {
	j.mu.Lock()
	defer j.mu.Unlock()
	if t := j.mtls[c.GrantID]; t != nil {
		return t
	}
	t := j.transport.Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: j.g.cfg.RootCAs, MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{*c.ClientCert}}
	if j.mtls == nil {
		j.mtls = map[string]*http.Transport{}
	}
	j.mtls[c.GrantID] = t
	return t
}
