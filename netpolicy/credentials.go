package netpolicy

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
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
	// ExtraHeaders are further headers the surrogate may be presented in
	// (GitLab's job token goes in JOB-TOKEN as well as in Authorization);
	// there it is replaced where it appears, inside Basic credentials
	// too, whatever Template says.
	ExtraHeaders []string
	// QueryParams are URL query parameters the surrogate may be presented
	// in (GitLab's job_token); it is replaced there. Anywhere else in the
	// URL it is refused.
	QueryParams []string
	// FormBody lets the surrogate be in the request body of a request
	// to a bound host, in the fields QueryParams names (as GitLab's API
	// takes its parameters from the query or the body alike): a
	// URL-encoded or multipart form, or a JSON object's top-level
	// string, up to maxFormBody, as in GitLab's pipeline trigger
	// (token=$CI_JOB_TOKEN). It is replaced there only when every
	// occurrence of it in the body is in such a field; a body that
	// carries it anywhere else (another form field, a nested value)
	// passes as sent, surrogate and all, so that the token cannot be
	// stored where the job reads it back.
	FormBody bool
	// StripUnbound: a header carrying the surrogate on a request of its
	// job to a host it is not bound to is removed and the request goes
	// on (an alert says so), where other surrogates are refused. For a
	// coordinator's token, which clients send along when they follow a
	// redirect (curl -L -H "JOB-TOKEN: ..." to an object store); the
	// surrogate is worthless there anyway.
	StripUnbound bool
	// PlainHTTP lets the gateway swap the surrogate on plain-HTTP requests
	// to the bound hosts. Only for a coordinator's own credential whose
	// coordinator is itself reached over plain HTTP: the runner sends the
	// value there in clear anyway.
	PlainHTTP bool
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

// allowsHeader reports whether the surrogate may be presented in the
// header named (canonical).
func (c *Credential) allowsHeader(name string) bool {
	if name == c.header() {
		return true
	}
	for _, h := range c.ExtraHeaders {
		if textproto.CanonicalMIMEHeaderKey(h) == name {
			return true
		}
	}
	return false
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
	for _, h := range c.ExtraHeaders {
		if !httpguts.ValidHeaderFieldName(h) {
			errs = append(errs, fmt.Errorf("extra header %q: not a header name", h))
		}
	}
	for _, q := range c.QueryParams {
		if q == "" || url.QueryEscape(q) != q {
			errs = append(errs, fmt.Errorf("query parameter %q: empty or needs escaping", q))
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

// inject rewrites the headers and query parameters of r that may carry
// the surrogate, replacing it.
func (c *Credential) inject(r *http.Request) {
	c.injectHeader(r.Header, c.header(), c.Template)
	for _, name := range c.ExtraHeaders {
		if name = textproto.CanonicalMIMEHeaderKey(name); name != c.header() {
			c.injectHeader(r.Header, name, "")
		}
	}
	if len(c.QueryParams) > 0 && r.URL.RawQuery != "" {
		r.URL.RawQuery = c.injectQuery(r.URL.RawQuery)
	}
}

// maxFormBody bounds the form body the gateway reads to swap a surrogate
// in (a form carrying a token is small); a longer one passes as sent.
// maxFormBodies bound how many a job's requests have read at once: the
// others wait, so a job cannot make the gateway hold more than 512 KiB.
const (
	maxFormBody   = 64 << 10
	maxFormBodies = 8
)

// injectBody replaces the surrogate in r's form body when c allows it;
// it reports whether it did, and stray when the body it read carries the
// surrogate where it may not (passed as sent).
func (c *Credential) injectBody(r *http.Request) (swapped, stray bool, err error) {
	if !c.FormBody || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || r.ContentLength > maxFormBody {
		return false, false, nil
	}
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var value []byte
	switch {
	case mt == "application/x-www-form-urlencoded":
		value = []byte(url.QueryEscape(string(c.Value)))
	case mt == "multipart/form-data" && params["boundary"] != "":
		value = c.Value
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		q, _ := json.Marshal(string(c.Value))
		value = q[1 : len(q)-1]
	default:
		return false, false, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxFormBody+1))
	if err != nil {
		return false, false, fmt.Errorf("reading the request body: %w", err)
	}
	n := bytes.Count(b, []byte(c.Surrogate))
	if len(b) > maxFormBody || n == 0 || c.bodyFieldHits(mt, params["boundary"], b) != n {
		r.Body = readCloser{io.MultiReader(bytes.NewReader(b), r.Body), r.Body}
		return false, n > 0 && len(b) <= maxFormBody, nil
	}
	b = bytes.ReplaceAll(b, []byte(c.Surrogate), value)
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength, r.TransferEncoding = int64(len(b)), nil
	return true, false, nil
}

// bodyFieldHits counts the surrogate's occurrences in body b (of media
// type mt) that are inside the fields QueryParams names: a URL-encoded
// pair's value, a multipart part's content, a JSON object's top-level
// string. An occurrence split by an escape is not counted (nor is it
// one of bytes.Count's), so the caller's comparison stays exact.
func (c *Credential) bodyFieldHits(mt, boundary string, b []byte) int {
	sur := []byte(c.Surrogate)
	hits := 0
	switch mt {
	case "application/x-www-form-urlencoded":
		for _, pair := range bytes.Split(b, []byte("&")) {
			k, v, _ := bytes.Cut(pair, []byte("="))
			key, err := url.QueryUnescape(string(k))
			if err == nil && slices.Contains(c.QueryParams, key) {
				hits += bytes.Count(v, sur)
			}
		}
	case "multipart/form-data":
		mr := multipart.NewReader(bytes.NewReader(b), boundary)
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				break
			}
			content, err := io.ReadAll(p)
			if err != nil {
				return -1
			}
			// The part's headers count too: a surrogate in a file name is
			// not in a field's value.
			if slices.Contains(c.QueryParams, p.FormName()) && p.FileName() == "" {
				hits += bytes.Count(content, sur)
			}
		}
	default: // JSON
		var obj map[string]json.RawMessage
		if json.Unmarshal(b, &obj) != nil {
			return -1
		}
		for _, k := range c.QueryParams {
			var v string
			if raw, ok := obj[k]; ok && json.Unmarshal(raw, &v) == nil && bytes.Contains(raw, sur) {
				hits += bytes.Count(raw, sur)
			}
		}
		// A key given twice: json keeps the last, the body holds both.
		if dec := json.NewDecoder(bytes.NewReader(b)); duplicateKeys(dec) {
			return -1
		}
	}
	return hits
}

// duplicateKeys reports whether the JSON object dec reads has a top-level
// key twice (or cannot be read).
func duplicateKeys(dec *json.Decoder) bool {
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return true
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		k, ok := t.(string)
		if err != nil || !ok || seen[k] {
			return true
		}
		seen[k] = true
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return true
		}
	}
	return false
}

// readCloser reads from r and closes c.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (rc readCloser) Close() error { return rc.c.Close() }

// injectHeader rewrites header name of h by template (see Credential).
func (c *Credential) injectHeader(h http.Header, name, template string) {
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
		out = append(out, c.render(v, template))
	}
	h[name] = out
}

// injectQuery replaces the surrogate in the values of the credential's
// query parameters, keeping every other byte of the query as sent.
func (c *Credential) injectQuery(raw string) string {
	pairs := strings.Split(raw, "&")
	for i, pair := range pairs {
		k, v, _ := strings.Cut(pair, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil || !slices.Contains(c.QueryParams, key) || !strings.Contains(val, c.Surrogate) {
			continue
		}
		pairs[i] = k + "=" + url.QueryEscape(strings.ReplaceAll(val, c.Surrogate, string(c.Value)))
	}
	return strings.Join(pairs, "&")
}

func (c *Credential) render(v, template string) string {
	switch {
	case template == "":
		if user, pass, ok := decodeBasic(v); ok && strings.Contains(user+":"+pass, c.Surrogate) {
			creds := strings.ReplaceAll(user+":"+pass, c.Surrogate, string(c.Value))
			return "Basic " + base64.StdEncoding.EncodeToString([]byte(creds))
		}
		return strings.ReplaceAll(v, c.Surrogate, string(c.Value))
	case strings.Contains(template, "{{value}}"):
		return strings.ReplaceAll(template, "{{value}}", string(c.Value))
	default:
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(template+":"+string(c.Value)))
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
	query     string // the query parameter it was found in, if that is all
}

// findSurrogates returns every known surrogate in r's header values
// (including decoded Basic credentials), URL and Host.
func (g *Gateway) findSurrogates(r *http.Request) []surrogateHit {
	g.surMu.RLock()
	defer g.surMu.RUnlock()
	if len(g.surrogates) == 0 {
		return nil
	}
	// Where a surrogate may be, each decoded once, and each searched for
	// the surrogates ending at each of its bytes: the gateway knows those
	// of every job of the last day, and the work stays linear in the
	// request's length however many they are.
	var hits []surrogateHit
	seen := map[surrogateHit]bool{}
	for _, p := range requestPlaces(r) {
		for end := surrogateTailLen; end <= len(p.text); end++ {
			for _, s := range g.surTails[p.text[end-surrogateTailLen:end]] {
				h := surrogateHit{surrogate: s, header: p.header, query: p.query}
				if end >= len(s) && p.text[end-len(s):end] == s && !seen[h] {
					seen[h] = true
					hits = append(hits, h)
				}
			}
		}
	}
	return hits
}

// surrogateTailLen is how many of a surrogate's last bytes index it
// (its random part: surrogates of one kind share their prefix).
const surrogateTailLen = 8

// addSurrogate knows s as o's; the caller holds surMu.
func (g *Gateway) addSurrogate(s string, o *surrogateOwner) {
	g.surrogates[s] = o
	tail := s[len(s)-surrogateTailLen:]
	g.surTails[tail] = append(g.surTails[tail], s)
}

// forgetSurrogate forgets s; the caller holds surMu.
func (g *Gateway) forgetSurrogate(s string) {
	delete(g.surrogates, s)
	tail := s[len(s)-surrogateTailLen:]
	if rest := slices.DeleteFunc(g.surTails[tail], func(x string) bool { return x == s }); len(rest) > 0 {
		g.surTails[tail] = rest
	} else {
		delete(g.surTails, tail)
	}
}

// place is a text of a request a surrogate may be found in, and where it
// is (header and query empty: the URL or Host).
type place struct{ text, header, query string }

// requestPlaces lists r's header values (and their Basic credentials,
// decoded), its URL without the query, its Host, and its query's names
// and values as sent and decoded.
func requestPlaces(r *http.Request) []place {
	var out []place
	for name, vals := range r.Header {
		name = textproto.CanonicalMIMEHeaderKey(name)
		for _, v := range vals {
			out = append(out, place{text: v, header: name})
			if user, pass, ok := decodeBasic(v); ok {
				out = append(out, place{text: user + ":" + pass, header: name})
			}
		}
	}
	bare := *r.URL
	bare.RawQuery = ""
	out = append(out, place{text: bare.String()}, place{text: r.Host})
	if r.URL.RawQuery == "" {
		return out
	}
	for _, pair := range strings.Split(r.URL.RawQuery, "&") {
		k, v, _ := strings.Cut(pair, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			out = append(out, place{text: pair})
			continue
		}
		out = append(out, place{text: k}, place{text: key}, place{text: v, query: key}, place{text: val, query: key})
	}
	return out
}

// stripUnbound removes from r the headers that carry a surrogate of the
// job's own active credential with StripUnbound to a host it is not
// bound to, each with an alert, and returns the other hits.
func (j *jobState) stripUnbound(r *http.Request, host string, port int, hits []surrogateHit) []surrogateHit {
	var rest []surrogateHit
	for _, h := range hits {
		j.g.surMu.RLock()
		o := j.g.surrogates[h.surrogate]
		strip := o != nil && o.cred.StripUnbound && h.header != "" && o.job == j.cfg.JobID && o.retired.IsZero() && !o.cred.boundTo(host)
		j.g.surMu.RUnlock()
		if !strip {
			rest = append(rest, h)
			continue
		}
		r.Header.Del(h.header)
		j.emit(Event{Kind: KindAlert, Host: host, Port: port, Method: r.Method, Path: r.URL.Path, Verdict: VerdictDenied, GrantID: o.cred.GrantID,
			Reason: fmt.Sprintf("surrogate presented to %s, which it is not bound to, in header %s: the header was removed", host, h.header)})
	}
	return rest
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
		case !intercepted && !o.cred.PlainHTTP:
			return nil, "surrogate presented over plain HTTP", grant
		case h.query != "" && !slices.Contains(o.cred.QueryParams, h.query):
			return nil, fmt.Sprintf("surrogate presented in query parameter %q instead of %s", h.query, o.cred.header()), grant
		case h.query == "" && !o.cred.allowsHeader(h.header):
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
			g.forgetSurrogate(s)
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
		g.addSurrogate(c.Surrogate, &surrogateOwner{job: jobID, cred: &c})
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
			g.forgetSurrogate(s)
		}
	}
}

// injectBodies swaps the surrogates of the job's credentials that allow
// it in r's form body, on a request to host (intercepted: over TLS; else
// only credentials that allow plain HTTP). A swap makes ev a proxied
// request naming the grant. It answers and reports false when the body
// cannot be read.
func (j *jobState) injectBodies(w http.ResponseWriter, r *http.Request, host string, intercepted bool, ev *Event, start time.Time) bool {
	for i := range j.cfg.Policy.Credentials {
		c := &j.cfg.Policy.Credentials[i]
		if !c.FormBody || c.IsMTLS() || !c.boundTo(host) || (!intercepted && !c.PlainHTTP) {
			continue
		}
		select {
		case j.bodies <- struct{}{}:
		case <-r.Context().Done():
			return false
		}
		swapped, stray, err := c.injectBody(r)
		<-j.bodies
		if stray {
			j.emit(Event{Kind: KindAlert, Host: host, Port: ev.Port, Method: r.Method, Path: r.URL.Path, Verdict: VerdictDenied, GrantID: c.GrantID,
				Reason: fmt.Sprintf("surrogate in the request body outside its fields (%s): the body went as sent, the surrogate not swapped", strings.Join(c.QueryParams, ", "))})
		}
		if err != nil {
			ev.Status, ev.Reason, ev.Duration = http.StatusBadRequest, err.Error(), time.Since(start)
			j.emit(*ev)
			http.Error(w, "airlock: reading the request body failed", http.StatusBadRequest)
			return false
		}
		if swapped {
			ev.Kind = KindProxied
			if ev.GrantID == "" {
				ev.GrantID = c.GrantID
			}
		}
	}
	return true
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
