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
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Every test gets its own loopback /24 under 127.77.0.0/16: .1 is the
// gateway, .2 the job, .3/.4 the fake internet's servers, .9 a stranger.
var subnetSeq atomic.Uint32

type testNet struct {
	gateway, job, up1, up2, stranger netip.Addr
}

func newTestNet() testNet {
	n := byte(subnetSeq.Add(1))
	a := func(h byte) netip.Addr { return netip.AddrFrom4([4]byte{127, 77, n, h}) }
	return testNet{gateway: a(1), job: a(2), up1: a(3), up2: a(4), stranger: a(9)}
}

// fakeCA is the fake internet's certificate authority.
type fakeCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newFakeCA(t testing.TB) *fakeCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake internet CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &fakeCA{cert: cert, key: key, pool: pool}
}

func (ca *fakeCA) serverCert(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]},
		DNSNames: names, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// recorded is what an upstream saw of one request.
type recorded struct {
	Host   string
	Path   string
	Query  string // raw, as received
	Header http.Header
	Body   string
}

// upstream is an httptest server of the fake internet that records requests.
type upstream struct {
	srv  *httptest.Server
	port int
	mu   sync.Mutex
	reqs []recorded
}

func (u *upstream) requests() []recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recorded(nil), u.reqs...)
}

// startUpstream serves "hello from <name>" on addr:port (port 0: any); with
// ca set it speaks TLS with a certificate for names.
func startUpstream(t testing.TB, addr netip.Addr, port int, ca *fakeCA, names ...string) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, recorded{Host: r.Host, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(body)})
		u.mu.Unlock()
		if r.URL.Path == "/switch" && r.Header.Get("Upgrade") == "echo" {
			// A protocol switch the server accepts: 101, then an echo.
			c, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprint(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
			_, _ = io.Copy(c, brw)
			return
		}
		fmt.Fprintf(w, "hello from %s", names[0])
	}))
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(addr, uint16(port)).String())
	if err != nil {
		t.Fatalf("listening for upstream: %v", err)
	}
	u.srv.Listener.Close()
	u.srv.Listener = ln
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if ca != nil {
		u.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, names...)}}
		u.srv.StartTLS()
	} else {
		u.srv.Start()
	}
	u.port = ln.Addr().(*net.TCPAddr).Port
	t.Cleanup(u.srv.Close)
	return u
}

// eventLog is an EventSink recording everything.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (l *eventLog) Emit(ev Event) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
}

func (l *eventLog) all() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.evs...)
}

// wait returns the first event matching pred, waiting up to 5s.
func (l *eventLog) wait(t testing.TB, what string, pred func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, ev := range l.all() {
			if pred(ev) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event; got %+v", what, l.all())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testGateway is a gateway with one registered job on a fresh test net.
type testGateway struct {
	net    testNet
	gw     *Gateway
	reg    *Registration
	events *eventLog
	ca     *CA
}

type gatewayOpts struct {
	resolver Resolver
	rootCAs  *x509.CertPool
	guard    GuardConfig
	peek     time.Duration // PeekTimeout; 0 is 5 s
}

func newTestGateway(t testing.TB, tn testNet, policy *Policy, o gatewayOpts) *testGateway {
	t.Helper()
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatalf("LoadOrCreateCA: %v", err)
	}
	ev := &eventLog{}
	if o.resolver == nil {
		o.resolver = StaticResolver{}
	}
	if o.peek == 0 {
		o.peek = 5 * time.Second
	}
	gw, err := NewGateway(GatewayConfig{
		Resolver: o.resolver, Guard: o.guard, Events: ev, CA: ca, RootCAs: o.rootCAs,
		Ports: &Ports{}, PeekTimeout: o.peek, DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatalf("NewGateway: %v", err)
	}
	t.Cleanup(func() {
		if err := gw.Close(); err != nil {
			t.Errorf("Gateway.Close: %v", err)
		}
	})
	reg, err := gw.Register(context.Background(), JobConfig{JobID: "job-1", GatewayIP: tn.gateway, JobIP: tn.job, Policy: policy})
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	return &testGateway{net: tn, gw: gw, reg: reg, events: ev, ca: ca}
}

// dialer returns a dialer bound to src (the job's or a stranger's address).
func dialer(src netip.Addr) *net.Dialer {
	return &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 5 * time.Second}
}

// proxyClient is an HTTP client of the job using the explicit proxy.
func (g *testGateway) proxyClient(roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: g.reg.Addrs().Proxy.String()}),
		DialContext:     dialer(g.net.job).DialContext,
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// connect opens a CONNECT tunnel from the job and returns the connection
// and the proxy's status code.
func (g *testGateway) connect(t testing.TB, target string) (net.Conn, int) {
	t.Helper()
	c, err := dialer(g.net.job).Dial("tcp4", g.reg.Addrs().Proxy.String())
	if err != nil {
		t.Fatalf("dialing proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("reading CONNECT response: %v", err)
	}
	resp.Body.Close()
	if br.Buffered() > 0 {
		t.Fatalf("proxy sent %d bytes after the CONNECT response", br.Buffered())
	}
	return c, resp.StatusCode
}

func readBody(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}

func mustEntries(t testing.TB, ss ...string) []Entry {
	t.Helper()
	es, err := ParseEntries(ss)
	if err != nil {
		t.Fatalf("ParseEntries(%q): %v", ss, err)
	}
	return es
}

func cidrFor(a netip.Addr, port int) string { return fmt.Sprintf("%s/32:%d", a, port) }

// serveTCP accepts TCP connections on addr (any port) until the test ends,
// each handled by handle in a goroutine of its own (which closes it), and
// returns the listener's address.
func serveTCP(t testing.TB, addr netip.Addr, handle func(c net.Conn)) netip.AddrPort {
	t.Helper()
	return serveTCPOn(t, netip.AddrPortFrom(addr, 0), handle)
}

// serveTCPOn is serveTCP on a given port (0: any).
func serveTCPOn(t testing.TB, ap netip.AddrPort, handle func(c net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
