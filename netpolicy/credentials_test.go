package netpolicy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

const (
	surrBearer = "airlock-sur-bearer-0001"
	surrTmpl   = "airlock-sur-tmpl-0002"
	surrBasic  = "airlock-sur-basic-0003"
	surrPass   = "airlock-sur-pass-0004"
	surrOther  = "airlock-sur-job2-0005"
	surrGL     = "airlock-sur-gitlab-0006"
	realValue  = "real-secret-value-do-not-leak"
)

// credEnv: job-1 with four credentials bound to hosts served by one TLS
// upstream (up1) and one on up2:443 for transparent TLS.
type credEnv struct {
	*testGateway
	fake     *fakeCA
	up       *upstream
	up443    *upstream
	plain    *upstream
	policy   *Policy
	resolver StaticResolver
	roots    *x509.CertPool
}

func newCredEnv(t *testing.T) *credEnv { return newCredEnvRoots(t, true) }

func newCredEnvRoots(t *testing.T, trustFake bool) *credEnv {
	t.Helper()
	tn := newTestNet()
	fake := newFakeCA(t)
	up := startUpstream(t, tn.up1, 0, fake, "bound.test", "tmpl.test", "basic.test", "pass.test", "free.test", "gl.test")
	up443 := startUpstream(t, tn.up2, 443, fake, "bound443.test")
	plain := startUpstream(t, tn.up1, 0, nil, "plain.test")
	res := StaticResolver{"*.test": {tn.up1}, "bound443.test": {tn.up2}}
	p := strconv.Itoa(up.port)
	pp := strconv.Itoa(plain.port)
	policy := &Policy{
		Allow: mustEntries(t, "bound.test:"+p, "tmpl.test:"+p, "basic.test:"+p, "pass.test:"+p, "free.test:"+p,
			"gl.test:"+p, "plain.test:"+pp, "glplain.test:"+pp, "bound.test:"+pp, "bound443.test", cidrFor(tn.up1, up.port), cidrFor(tn.up1, plain.port), cidrFor(tn.up2, 443)),
		Credentials: []Credential{
			{GrantID: "grant-bearer", Surrogate: surrBearer, Hosts: []string{"bound.test", "bound443.test"}, Value: []byte(realValue)},
			{GrantID: "grant-tmpl", Surrogate: surrTmpl, Hosts: []string{"tmpl.test"}, Header: "x-api-key", Template: "token {{value}}", Value: []byte(realValue)},
			{GrantID: "grant-basic", Surrogate: surrBasic, Hosts: []string{"basic.test"}, Template: "x-access-token", Value: []byte(realValue)},
			{GrantID: "grant-pass", Surrogate: surrPass, Hosts: []string{"*.pass.test", "pass.test"}, Value: []byte(realValue)},
			// A coordinator's job token as GitLab takes it: in Authorization,
			// JOB-TOKEN or ?job_token=, and over plain HTTP where GitLab is.
			{GrantID: "grant-gl", Surrogate: surrGL, Hosts: []string{"gl.test", "glplain.test"}, ExtraHeaders: []string{"JOB-TOKEN"},
				QueryParams: []string{"job_token", "token"}, FormBody: true, PlainHTTP: true, StripUnbound: true, Value: []byte(realValue)},
		},
	}
	opts := gatewayOpts{resolver: res}
	if trustFake {
		opts.rootCAs = fake.pool
	}
	g := newTestGateway(t, tn, policy, opts)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(g.ca.CertPEM())
	roots.AddCert(fake.cert) // tunneled (not bound) hosts present their own certificates
	return &credEnv{testGateway: g, fake: fake, up: up, up443: up443, plain: plain, policy: policy, resolver: res, roots: roots}
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func TestCredentialInjection(t *testing.T) {
	e := newCredEnv(t)
	client := e.proxyClient(e.roots)
	p := strconv.Itoa(e.up.port)
	tests := []struct {
		name       string
		host       string
		header     string
		value      string
		wantHeader string
		wantGrant  string
	}{
		{"bearer", "bound.test", "Authorization", "Bearer " + surrBearer, "Bearer " + realValue, "grant-bearer"},
		{"template", "tmpl.test", "X-Api-Key", surrTmpl, "token " + realValue, "grant-tmpl"},
		{"basic mode", "basic.test", "Authorization", basic("x-access-token", surrBasic), basic("x-access-token", realValue), "grant-basic"},
		{"basic password replaced", "pass.test", "Authorization", basic("me", surrPass), basic("me", realValue), "grant-pass"},
		{"extra header", "gl.test", "Job-Token", surrGL, realValue, "grant-gl"},
		{"extra header's credential in basic", "gl.test", "Authorization", basic("gitlab-ci-token", surrGL), basic("gitlab-ci-token", realValue), "grant-gl"},
		{"no surrogate passes unchanged", "free.test", "Authorization", "Bearer mine", "Bearer mine", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			url := "https://" + tc.host + ":" + p + "/api/" + tc.name
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set(tc.header, tc.value)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET %s: %v", url, err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != 200 || body != "hello from bound.test" {
				t.Fatalf("GET %s = %d %q, want 200", url, resp.StatusCode, body)
			}
			if resp.TLS == nil || resp.TLS.PeerCertificates[0].Issuer.CommonName != "Airlock egress gateway CA" {
				if tc.wantGrant != "" {
					t.Errorf("GET %s was not intercepted by the gateway CA", url)
				}
			}
			var got string
			for _, r := range e.up.requests() {
				if r.Path == "/api/"+tc.name {
					got = r.Header.Get(tc.header)
				}
			}
			if got != tc.wantHeader {
				t.Errorf("upstream %s header = %q, want %q", tc.header, got, tc.wantHeader)
			}
			if tc.wantGrant != "" {
				e.events.wait(t, "proxied", func(ev Event) bool {
					return ev.Kind == KindProxied && ev.GrantID == tc.wantGrant && ev.Status == 200 &&
						ev.Method == "GET" && ev.Path == "/api/"+tc.name && ev.Host == tc.host && ev.Bytes > 0
				})
			}
		})
	}
	t.Run("transparent TLS", func(t *testing.T) {
		c, err := dialer(e.net.job).Dial("tcp4", e.reg.Addrs().TransparentTLS.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc := tls.Client(c, &tls.Config{ServerName: "bound443.test", RootCAs: e.roots, NextProtos: []string{"h2", "http/1.1"}})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake via transparent listener: %v", err)
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
			t.Errorf("ALPN = %q, want http/1.1", p)
		}
		fmt.Fprintf(tc, "GET /t HTTP/1.1\r\nHost: bound443.test\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n", surrBearer)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		reqs := e.up443.requests()
		if resp.StatusCode != 200 || len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+realValue {
			t.Errorf("transparent injection: status %d, upstream saw %d requests, want 200 and the real value", resp.StatusCode, len(reqs))
		}
	})
	assertNoSecretInEvents(t, e.events)
}

func assertNoSecretInEvents(t *testing.T, l *eventLog) {
	t.Helper()
	b, err := json.Marshal(l.all())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), realValue) || strings.Contains(string(b), base64.StdEncoding.EncodeToString([]byte(realValue))) {
		t.Errorf("events contain the secret value: %s", b)
	}
	for _, s := range []string{surrBearer, surrTmpl, surrBasic, surrPass, surrOther, surrGL} {
		if strings.Contains(string(b), s) {
			t.Errorf("events contain surrogate %s", s)
		}
	}
}

func TestSurrogateRefused(t *testing.T) {
	e := newCredEnv(t)
	client := e.proxyClient(e.roots)
	p := strconv.Itoa(e.up.port)
	tests := []struct {
		name       string
		url        string
		header     string
		value      string
		wantReason string
	}{
		{"plain HTTP to another host", "http://plain.test:" + strconv.Itoa(e.plain.port) + "/", "Authorization", "Bearer " + surrBearer, "not bound"},
		{"plain HTTP in basic", "http://plain.test:" + strconv.Itoa(e.plain.port) + "/", "Authorization", basic("u", surrBearer), "not bound"},
		{"intercepted host bound to another grant", "https://basic.test:" + p + "/", "Authorization", "Bearer " + surrBearer, "not bound"},
		{"wrong header", "https://bound.test:" + p + "/", "X-Token", surrBearer, "instead of Authorization"},
		{"in the URL", "https://bound.test:" + p + "/?t=" + surrBearer, "", "", `query parameter "t"`},
		{"bound host over plain HTTP", "http://bound.test:" + strconv.Itoa(e.plain.port) + "/", "Authorization", "Bearer " + surrBearer, "over plain HTTP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.up.requests()) + len(e.plain.requests())
			req, _ := http.NewRequest(http.MethodGet, tc.url, nil)
			if tc.header != "" {
				req.Header.Set(tc.header, tc.value)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET %s: %v", tc.url, err)
			}
			readBody(t, resp)
			if resp.StatusCode != 403 {
				t.Errorf("GET %s with a misplaced surrogate = %d, want 403", tc.url, resp.StatusCode)
			}
			if after := len(e.up.requests()) + len(e.plain.requests()); after != before {
				t.Errorf("upstreams saw %d new requests, want 0", after-before)
			}
			e.events.wait(t, "alert", func(ev Event) bool {
				return ev.Kind == KindAlert && ev.GrantID == "grant-bearer" && strings.Contains(ev.Reason, tc.wantReason)
			})
		})
	}

	// A second job on the same gateway binds the same host with its own
	// credential; job-1's surrogate from job-2 is refused, also after
	// job-1 has ended.
	tn2 := newTestNet()
	p2 := &Policy{
		Allow:       e.policy.Allow,
		Credentials: []Credential{{GrantID: "grant-job2", Surrogate: surrOther, Hosts: []string{"bound.test"}, Value: []byte(realValue)}},
	}
	reg2, err := e.gw.Register(context.Background(), JobConfig{JobID: "job-2", GatewayIP: tn2.gateway, JobIP: tn2.job, Policy: p2})
	if err != nil {
		t.Fatalf("Register job-2: %v", err)
	}
	t.Cleanup(func() { _ = reg2.Close() })
	g2 := &testGateway{net: tn2, gw: e.gw, reg: reg2, events: e.events}
	client2 := g2.proxyClient(e.roots)
	url := "https://bound.test:" + p + "/cross"
	get := func() int {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+surrBearer)
		resp, err := client2.Do(req)
		if err != nil {
			t.Fatalf("GET %s from job-2: %v", url, err)
		}
		readBody(t, resp)
		return resp.StatusCode
	}
	if got := get(); got != 403 {
		t.Errorf("job-2 using job-1's surrogate = %d, want 403", got)
	}
	e.events.wait(t, "cross-job alert", func(ev Event) bool {
		return ev.Kind == KindAlert && ev.Job == "job-2" && strings.Contains(ev.Reason, "another job (job-1)")
	})
	if err := e.reg.Close(); err != nil {
		t.Fatalf("Unregister job-1: %v", err)
	}
	client2.CloseIdleConnections()
	if got := get(); got != 403 {
		t.Errorf("job-1's surrogate after job-1 ended = %d, want 403", got)
	}
	e.events.wait(t, "ended alert", func(ev Event) bool {
		return ev.Kind == KindAlert && ev.Job == "job-2" && strings.Contains(ev.Reason, "of job job-1 presented after its job ended")
	})
	for _, r := range e.up.requests() {
		if r.Path == "/cross" {
			t.Errorf("upstream received the cross-job request")
		}
	}
	// Re-registering job-1's surrogate for another job is refused.
	tn3 := newTestNet()
	_, err = e.gw.Register(context.Background(), JobConfig{JobID: "job-3", GatewayIP: tn3.gateway, JobIP: tn3.job,
		Policy: &Policy{Credentials: []Credential{{GrantID: "g3", Surrogate: surrBearer, Hosts: []string{"bound.test"}, Value: []byte("x")}}}})
	if err == nil || !strings.Contains(err.Error(), "surrogate already in use") {
		t.Errorf("Register with a used surrogate = %v, want surrogate already in use", err)
	}
	if strings.Contains(fmt.Sprint(err), surrBearer) {
		t.Errorf("Register error names the surrogate: %v", err)
	}
	assertNoSecretInEvents(t, e.events)
}

func TestSurrogateAfterUnregister(t *testing.T) {
	e := newCredEnv(t)
	client := e.proxyClient(e.roots)
	url := "https://bound.test:" + strconv.Itoa(e.up.port) + "/late"
	if err := e.reg.Close(); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	// The job's listeners are gone.
	if _, err := client.Get(url); err == nil {
		t.Fatalf("GET via the proxy of an unregistered job succeeded")
	}
	// The same job id and addresses come back (a re-run) with a fresh
	// credential; the old surrogate is refused with an alert.
	p := &Policy{Allow: e.policy.Allow, Credentials: []Credential{{GrantID: "grant-new", Surrogate: "airlock-sur-new-0009", Hosts: []string{"bound.test"}, Value: []byte(realValue)}}}
	reg, err := e.gw.Register(context.Background(), JobConfig{JobID: "job-1", GatewayIP: e.net.gateway, JobIP: e.net.job, Policy: p})
	if err != nil {
		t.Fatalf("re-Register: %v", err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	e.reg = reg
	client = e.proxyClient(e.roots)
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+surrBearer)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	readBody(t, resp)
	if resp.StatusCode != 403 {
		t.Errorf("old surrogate after Unregister = %d, want 403", resp.StatusCode)
	}
	e.events.wait(t, "ended alert", func(ev Event) bool {
		return ev.Kind == KindAlert && strings.Contains(ev.Reason, "after its job ended") && ev.GrantID == "grant-bearer"
	})
}

func TestInterceptChecks(t *testing.T) {
	t.Run("SNI mismatch", func(t *testing.T) {
		e := newCredEnv(t)
		target := "bound.test:" + strconv.Itoa(e.up.port)
		c, status := e.connect(t, target)
		if status != 200 {
			t.Fatalf("CONNECT %s = %d, want 200", target, status)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "free.test", RootCAs: e.roots})
		if err := tc.Handshake(); err == nil {
			t.Fatalf("handshake with SNI free.test inside CONNECT %s succeeded", target)
		}
		e.events.wait(t, "SNI mismatch", func(ev Event) bool {
			return ev.Kind == KindTLS && ev.Verdict == VerdictDenied && strings.Contains(ev.Reason, `SNI "free.test" does not match host "bound.test"`)
		})
	})
	t.Run("Host mismatch", func(t *testing.T) {
		e := newCredEnv(t)
		target := "bound.test:" + strconv.Itoa(e.up.port)
		c, _ := e.connect(t, target)
		tc := tls.Client(c, &tls.Config{ServerName: "bound.test", RootCAs: e.roots})
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: free.test\r\nAuthorization: Bearer %s\r\n\r\n", surrBearer)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != 403 || len(e.up.requests()) != 0 {
			t.Errorf("Host free.test inside bound.test TLS = %d, %d upstream requests; want 403, 0", resp.StatusCode, len(e.up.requests()))
		}
	})
	t.Run("upstream verified", func(t *testing.T) {
		e := newCredEnvRoots(t, false)
		url := "https://bound.test:" + strconv.Itoa(e.up.port) + "/"
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+surrBearer)
		resp, err := e.proxyClient(e.roots).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != http.StatusBadGateway || len(e.up.requests()) != 0 {
			t.Errorf("GET %s with an untrusted upstream certificate = %d, %d upstream requests; want 502, 0", url, resp.StatusCode, len(e.up.requests()))
		}
		e.events.wait(t, "unverified upstream", func(ev Event) bool {
			return ev.Kind == KindProxied && ev.Status == http.StatusBadGateway && strings.Contains(ev.Reason, "certificate")
		})
	})
}

// A credential with extra places (GitLab's job token) is swapped in the
// query parameters it names, keeping the rest of the query as sent, and
// over plain HTTP when it allows that; anywhere else it is refused.
func TestSurrogateInQueryAndPlainHTTP(t *testing.T) {
	e := newCredEnv(t)
	client := e.proxyClient(e.roots)
	tls, plain := "https://gl.test:"+strconv.Itoa(e.up.port), "http://glplain.test:"+strconv.Itoa(e.plain.port)
	get := func(url, header, value string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if header != "" {
			req.Header.Set(header, value)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		readBody(t, resp)
		return resp.StatusCode
	}
	find := func(u *upstream, path string) *recorded {
		for _, r := range u.requests() {
			if r.Path == path {
				return &r
			}
		}
		return nil
	}

	if got := get(tls+"/q?job=a&job_token="+surrGL+"&x=%2F", "", ""); got != 200 {
		t.Fatalf("job_token over TLS = %d, want 200", got)
	}
	if r := find(e.up, "/q"); r == nil || r.Query != "job=a&job_token="+realValue+"&x=%2F" {
		t.Errorf("upstream query = %+v, want job_token swapped and the rest as sent", r)
	}
	if got := get(plain+"/plainq?job_token="+surrGL, "", ""); got != 200 {
		t.Fatalf("job_token over plain HTTP = %d, want 200", got)
	}
	if r := find(e.plain, "/plainq"); r == nil || r.Query != "job_token="+realValue {
		t.Errorf("plain upstream query = %+v, want the real value", r)
	}
	if got := get(plain+"/plainh", "JOB-TOKEN", surrGL); got != 200 {
		t.Fatalf("JOB-TOKEN over plain HTTP = %d, want 200", got)
	}
	if r := find(e.plain, "/plainh"); r == nil || r.Header.Get("Job-Token") != realValue {
		t.Errorf("plain upstream JOB-TOKEN = %+v, want the real value", r)
	}
	e.events.wait(t, "plain injection", func(ev Event) bool {
		return ev.Kind == KindProxied && ev.GrantID == "grant-gl" && ev.Host == "glplain.test" && ev.Path == "/plainh" && ev.Status == 200
	})
	// Bodies (GitLab's pipeline trigger), over TLS and plain HTTP: the
	// surrogate is swapped in the credential's fields only, and a body
	// that also carries it anywhere else (a variable the trigger would
	// store, a file, a nested value, a key twice) or of another type
	// passes as sent.
	form := func(fields ...[3]string) (string, string) {
		var mp bytes.Buffer
		mw := multipart.NewWriter(&mp)
		for _, f := range fields {
			if f[2] != "" {
				w, _ := mw.CreateFormFile(f[0], f[2])
				io.WriteString(w, f[1])
			} else {
				mw.WriteField(f[0], f[1])
			}
		}
		mw.Close()
		return mw.FormDataContentType(), mp.String()
	}
	mpType, mpBody := form([3]string{"token", surrGL}, [3]string{"ref", "main"})
	mpVarType, mpVarBody := form([3]string{"token", surrGL}, [3]string{"variables[T]", surrGL})
	mpFileType, mpFileBody := form([3]string{"token", surrGL, "token.txt"})
	for _, tc := range []struct{ name, url, ctype, body, want string }{
		{"form", tls + "/trigger", "application/x-www-form-urlencoded", "token=" + surrGL + "&ref=main", "token=" + realValue + "&ref=main"},
		{"plain form", plain + "/ptrigger", "application/x-www-form-urlencoded", "ref=main&token=" + surrGL, "ref=main&token=" + realValue},
		{"form, also in a variable", tls + "/fvar", "application/x-www-form-urlencoded", "token=" + surrGL + "&variables%5BT%5D=" + surrGL, ""},
		{"form, in a key", tls + "/fkey", "application/x-www-form-urlencoded", "token=" + surrGL + "&" + surrGL + "=1", ""},
		{"multipart", tls + "/mtrigger", mpType, mpBody, strings.ReplaceAll(mpBody, surrGL, realValue)},
		{"multipart, also in a variable", tls + "/mvar", mpVarType, mpVarBody, ""},
		{"multipart file", tls + "/mfile", mpFileType, mpFileBody, ""},
		{"json", tls + "/json", "application/json", `{"token": "` + surrGL + `", "ref": "main"}`, `{"token": "` + realValue + `", "ref": "main"}`},
		{"json, also nested", tls + "/jnest", "application/json", `{"token":"` + surrGL + `","variables":{"T":"` + surrGL + `"}}`, ""},
		{"json, key twice", tls + "/jtwice", "application/json", `{"token":"` + surrGL + `","token":"x"}`, ""},
		{"json, not an object", tls + "/jlist", "application/json", `["` + surrGL + `"]`, ""},
		{"text", tls + "/text", "text/plain", "token=" + surrGL, ""},
	} {
		if tc.want == "" {
			tc.want = tc.body // as sent
		}
		resp, err := client.Post(tc.url, tc.ctype, strings.NewReader(tc.body))
		if err != nil {
			t.Fatalf("%s: POST %s: %v", tc.name, tc.url, err)
		}
		readBody(t, resp)
		u := e.up
		if strings.HasPrefix(tc.url, "http:") {
			u = e.plain
		}
		path := tc.url[strings.LastIndex(tc.url, "/"):]
		if r := find(u, path); resp.StatusCode != 200 || r == nil || r.Body != tc.want {
			t.Errorf("%s: POST = %d, upstream got %+v, want body %q", tc.name, resp.StatusCode, r, tc.want)
		}
	}
	e.events.wait(t, "stray body surrogate alert", func(ev Event) bool {
		return ev.Kind == KindAlert && ev.Path == "/fvar" && ev.GrantID == "grant-gl" && strings.Contains(ev.Reason, "outside its fields")
	})
	// A form over maxFormBody passes as sent; many at once all get
	// through the job's bound on bodies read together.
	big := "token=" + surrGL + "&pad=" + strings.Repeat("x", maxFormBody)
	if resp, err := client.Post(tls+"/big", "application/x-www-form-urlencoded", strings.NewReader(big)); err != nil {
		t.Fatal(err)
	} else if readBody(t, resp); resp.StatusCode != 200 {
		t.Errorf("a big form = %d, want 200", resp.StatusCode)
	}
	if r := find(e.up, "/big"); r == nil || r.Body != big {
		t.Errorf("a form over %d bytes was changed", maxFormBody)
	}
	var wg sync.WaitGroup
	codes := make([]int, 3*maxFormBodies)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Post(fmt.Sprintf("%s/many%d", tls, i), "application/x-www-form-urlencoded", strings.NewReader("token="+surrGL))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				codes[i] = resp.StatusCode
			}
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if r := find(e.up, fmt.Sprintf("/many%d", i)); c != 200 || r == nil || r.Body != "token="+realValue {
			t.Errorf("form %d of %d at once: %d, upstream %+v; want 200 and the real value", i, len(codes), c, r)
		}
	}
	e.events.wait(t, "form injection", func(ev Event) bool {
		return ev.Kind == KindProxied && ev.GrantID == "grant-gl" && ev.Path == "/ptrigger" && ev.Status == 200
	})

	// Sent along to a host it is not bound to (a redirect the client
	// followed), its header is removed and the request goes on, with an
	// alert; over plain HTTP and to a host intercepted for another grant.
	for _, tc := range []struct {
		url string
		up  *upstream
	}{
		{"http://plain.test:" + strconv.Itoa(e.plain.port) + "/strip", e.plain},
		{"https://bound.test:" + strconv.Itoa(e.up.port) + "/strip2", e.up},
	} {
		if got := get(tc.url, "JOB-TOKEN", surrGL); got != 200 {
			t.Errorf("GET %s with the surrogate in JOB-TOKEN = %d, want 200", tc.url, got)
		}
		path := tc.url[strings.LastIndex(tc.url, "/"):]
		if r := find(tc.up, path); r == nil || r.Header.Get("Job-Token") != "" {
			t.Errorf("GET %s reached the host as %+v, want it without JOB-TOKEN", tc.url, r)
		}
		e.events.wait(t, "removed header", func(ev Event) bool {
			return ev.Kind == KindAlert && ev.GrantID == "grant-gl" && ev.Path == path && strings.Contains(ev.Reason, "header Job-Token: the header was removed")
		})
	}

	// (Before the refusals: a surrogate in the path is in an alert's path,
	// which the runner's trail masks.)
	assertNoSecretInEvents(t, e.events)

	for _, tc := range []struct{ name, url, header, reason string }{
		{"another parameter", tls + "/r1?other=" + surrGL, "", `query parameter "other"`},
		{"a parameter's name", tls + "/r2?" + surrGL + "=1", "", "the URL"},
		{"encoded in a value", tls + "/r3?other=" + strings.ReplaceAll(surrGL, "-", "%2D"), "", `query parameter "other"`},
		{"the path", tls + "/r4/" + surrGL, "", "the URL"},
		{"a header not named", tls + "/r5", "X-Token", "header X-Token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			value := surrGL
			if tc.header == "" {
				value = ""
			}
			before := len(e.up.requests())
			if got := get(tc.url, tc.header, value); got != 403 {
				t.Errorf("GET %s = %d, want 403", tc.url, got)
			}
			if n := len(e.up.requests()) - before; n != 0 {
				t.Errorf("upstream saw %d requests, want 0", n)
			}
			e.events.wait(t, "alert", func(ev Event) bool {
				return ev.Kind == KindAlert && ev.GrantID == "grant-gl" && strings.Contains(ev.Reason, tc.reason)
			})
		})
	}
}
