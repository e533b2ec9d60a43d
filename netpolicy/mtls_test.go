package netpolicy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// clientCert mints a client certificate of the fake internet's CA.
func (ca *fakeCA) clientCert(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// mtlsUpstream is a server of the fake internet that completes the TLS
// handshake only with a client certificate of the fake CA.
type mtlsUpstream struct {
	mu    sync.Mutex
	peers []string // client certificate CN per request
	auth  []string // Authorization header per request
}

func startMTLSUpstream(t *testing.T, addr netip.Addr, ca *fakeCA, name string) *mtlsUpstream {
	t.Helper()
	u := &mtlsUpstream{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.peers = append(u.peers, r.TLS.PeerCertificates[0].Subject.CommonName)
		u.auth = append(u.auth, r.Header.Get("Authorization"))
		u.mu.Unlock()
		fmt.Fprint(w, "hello mtls client")
	}))
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(addr, 443).String())
	if err != nil {
		t.Fatalf("listening for the mTLS upstream: %v", err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, name)},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return u
}

func (u *mtlsUpstream) seen() ([]string, []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.peers...), append([]string(nil), u.auth...)
}

// TestMTLSDeliveryWithoutTheKeyInTheJob: an upstream that requires a
// client certificate is reached by a job that holds none, through the
// explicit proxy and transparently; the gateway presents the certificate
// and records its fingerprint; header injection works on the same host at
// once; another job's connection gets nothing.
func TestMTLSDeliveryWithoutTheKeyInTheJob(t *testing.T) {
	tn := newTestNet()
	fake := newFakeCA(t)
	up := startMTLSUpstream(t, tn.up2, fake, "mtls.allowed.test")
	cert := fake.clientCert(t, "airlock-runner-client")

	// Without a certificate the upstream refuses the handshake.
	direct := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:     (&net.Dialer{}).DialContext,
		TLSClientConfig: &tls.Config{RootCAs: fake.pool, ServerName: "mtls.allowed.test"}}}
	if resp, err := direct.Get("https://" + netip.AddrPortFrom(tn.up2, 443).String() + "/"); err == nil {
		resp.Body.Close()
		t.Fatalf("the upstream answered a client without a certificate: the test shows nothing")
	}

	surrogate := testSurrogate()
	mtlsCred := Credential{GrantID: "g-mtls", LeaseID: "l-1", Hosts: []string{"mtls.allowed.test"}, ClientCert: &cert}
	policy := &Policy{
		Allow: mustEntries(t, "mtls.allowed.test:443", cidrFor(tn.up2, 443)),
		Credentials: []Credential{mtlsCred, {GrantID: "g-hdr", LeaseID: "l-2", Surrogate: surrogate,
			Hosts: []string{"mtls.allowed.test"}, Template: "Bearer {{value}}", Value: []byte("real-header-token-123")}},
	}
	g := newTestGateway(t, tn, policy, gatewayOpts{resolver: StaticResolver{"mtls.allowed.test": {tn.up2}}, rootCAs: fake.pool})
	jobRoots := x509.NewCertPool()
	jobRoots.AppendCertsFromPEM(g.ca.CertPEM())

	// Through the explicit proxy (CONNECT), with the header surrogate.
	req, _ := http.NewRequest(http.MethodGet, "https://mtls.allowed.test/p", nil)
	req.Header.Set("Authorization", "Bearer "+surrogate)
	resp, err := g.proxyClient(jobRoots).Do(req)
	if err != nil {
		t.Fatalf("GET via proxy: %v", err)
	}
	if body := readBody(t, resp); resp.StatusCode != 200 || body != "hello mtls client" {
		t.Fatalf("GET via proxy: %d %q", resp.StatusCode, body)
	}

	// Transparently (SNI on 443), without any header.
	c, err := dialer(tn.job).Dial("tcp4", g.reg.Addrs().TransparentTLS.String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "mtls.allowed.test", RootCAs: jobRoots})
	fmt.Fprintf(tc, "GET /t HTTP/1.1\r\nHost: mtls.allowed.test\r\nConnection: close\r\n\r\n")
	tresp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("transparent GET: %v", err)
	}
	if body := readBody(t, tresp); tresp.StatusCode != 200 || body != "hello mtls client" {
		t.Fatalf("transparent GET: %d %q", tresp.StatusCode, body)
	}
	c.Close()

	peers, auth := up.seen()
	if len(peers) != 2 || peers[0] != "airlock-runner-client" || peers[1] != "airlock-runner-client" {
		t.Errorf("upstream saw client certificates %q, want the runner's twice", peers)
	}
	if len(auth) != 2 || auth[0] != "Bearer real-header-token-123" || auth[1] != "" {
		t.Errorf("upstream saw Authorization %q, want the injected header on the first request only", auth)
	}
	fp := mtlsCred.CertFingerprint()
	if !strings.HasPrefix(fp, "sha256:") {
		t.Fatalf("fingerprint %q", fp)
	}
	for _, path := range []string{"/p", "/t"} {
		g.events.wait(t, "proxied "+path, func(ev Event) bool {
			return ev.Kind == KindProxied && ev.Path == path && ev.Status == 200 && ev.CertGrantID == "g-mtls" && ev.CertFingerprint == fp
		})
	}

	// Another job (a stranger's address) reaching this gateway gets
	// nothing: its connection is dropped and recorded.
	if s, err := dialer(tn.stranger).Dial("tcp4", g.reg.Addrs().TransparentTLS.String()); err == nil {
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, _ := s.Read(make([]byte, 1)); n > 0 {
			t.Errorf("a stranger's connection got bytes")
		}
		s.Close()
	}
	g.events.wait(t, "stranger refused and raised as an alert", func(ev Event) bool {
		return ev.Verdict == VerdictDenied && ev.Kind == KindAlert && ev.Addr == tn.stranger.String()
	})
	if peers, _ := up.seen(); len(peers) != 2 {
		t.Errorf("upstream saw %d requests, want 2", len(peers))
	}

	// A second job running at the same time, allowed to reach the host but
	// not granted the certificate, gets no certificate presented for it:
	// its tunnel reaches the upstream, whose handshake then fails.
	other := newTestNet()
	reg2, err := g.gw.Register(context.Background(), JobConfig{JobID: "job-2", GatewayIP: other.gateway, JobIP: other.job,
		Policy: &Policy{Allow: mustEntries(t, "mtls.allowed.test:443", cidrFor(tn.up2, 443))}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg2.Close()
	g2 := &testGateway{net: other, gw: g.gw, reg: reg2, events: g.events}
	if resp, err := g2.proxyClient(fake.pool).Get("https://mtls.allowed.test/other-job"); err == nil {
		resp.Body.Close()
		t.Errorf("the second job reached the mTLS upstream (status %d): it was given the first job's certificate", resp.StatusCode)
	}
	if peers, _ := up.seen(); len(peers) != 2 {
		t.Errorf("upstream served %d requests, want still 2", len(peers))
	}

	// A third job whose policy does not name the host is refused, and as
	// the host's certificate is the first job's, the refusal is an alert.
	third := newTestNet()
	reg3, err := g.gw.Register(context.Background(), JobConfig{JobID: "job-3", GatewayIP: third.gateway, JobIP: third.job,
		Policy: &Policy{}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg3.Close()
	g3 := &testGateway{net: third, gw: g.gw, reg: reg3, events: g.events}
	if resp, err := g3.proxyClient(fake.pool).Get("https://mtls.allowed.test/third-job"); err == nil {
		resp.Body.Close()
		t.Errorf("a job without the host in its policy reached it")
	}
	g.events.wait(t, "misuse alert", func(ev Event) bool {
		return ev.Job == "job-3" && ev.Kind == KindAlert && ev.Host == "mtls.allowed.test" && strings.Contains(ev.Reason, "belongs to another job (job-1)")
	})
}

// testSurrogate returns a surrogate-shaped test value.
func testSurrogate() string { return "airlock-surrogate-test-0123456789" }

// BenchmarkMTLSRequest compares a keep-alive GET to an mTLS-only upstream
// made by a client holding the certificate (direct) with the same GET by
// a job holding nothing, through the gateway (CONNECT, intercepted, the
// certificate presented upstream). Reports ms/request; the ratio is the
// README figure.
func BenchmarkMTLSRequest(b *testing.B) {
	tn := newTestNet()
	fake := newFakeCA(b)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(tn.up2, 0).String())
	if err != nil {
		b.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{fake.serverCert(b, "mtls.allowed.test")},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: fake.pool}
	srv.StartTLS()
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	cert := fake.clientCert(b, "bench")
	url := fmt.Sprintf("https://mtls.allowed.test:%d/", port)
	run := func(b *testing.B, c *http.Client) {
		for range b.N {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/request")
	}
	b.Run("direct", func(b *testing.B) {
		c := &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, ln.Addr().String())
			},
			TLSClientConfig: &tls.Config{RootCAs: fake.pool, Certificates: []tls.Certificate{cert}}}}
		defer c.CloseIdleConnections()
		run(b, c)
	})
	b.Run("gateway", func(b *testing.B) {
		policy := &Policy{Allow: mustEntries(b, fmt.Sprintf("mtls.allowed.test:%d", port), cidrFor(tn.up2, port)),
			Credentials: []Credential{{GrantID: "g", LeaseID: "l", Hosts: []string{"mtls.allowed.test"}, ClientCert: &cert}}}
		g := newTestGateway(b, tn, policy, gatewayOpts{resolver: StaticResolver{"mtls.allowed.test": {tn.up2}}, rootCAs: fake.pool})
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(g.ca.CertPEM())
		c := g.proxyClient(roots)
		defer c.CloseIdleConnections()
		run(b, c)
	})
}
