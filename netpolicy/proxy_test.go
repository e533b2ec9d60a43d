package netpolicy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// proxyEnv is a gateway plus a small fake internet:
//
//	api.allowed.test, *.wild.test -> up1 (TLS, any port)
//	plain.allowed.test            -> up1 (plain HTTP, any port)
//	tls.allowed.test, evil.test   -> up2:443 (TLS)
//	rebind.test                   -> 127.0.0.1 (never dialed: guard)
//	meta.test                     -> 169.254.169.254 (never dialed: guard)
type proxyEnv struct {
	*testGateway
	fake                  *fakeCA
	tlsUp, plainUp, up443 *upstream
}

func newProxyEnv(t *testing.T, audit bool) *proxyEnv {
	t.Helper()
	return newProxyEnvPeek(t, audit, 0)
}

// newProxyEnvPeek is newProxyEnv with the gateway's PeekTimeout (0: 5 s).
func newProxyEnvPeek(t *testing.T, audit bool, peek time.Duration) *proxyEnv {
	t.Helper()
	tn := newTestNet()
	fake := newFakeCA(t)
	tlsUp := startUpstream(t, tn.up1, 0, fake, "api.allowed.test", "x.wild.test", "evil.test")
	plainUp := startUpstream(t, tn.up1, 0, nil, "plain.allowed.test")
	up443 := startUpstream(t, tn.up2, 443, fake, "tls.allowed.test", "evil.test")
	res := StaticResolver{
		"api.allowed.test":   {tn.up1},
		"*.wild.test":        {tn.up1},
		"plain.allowed.test": {tn.up1},
		"tls.allowed.test":   {tn.up2},
		"evil.test":          {tn.up2},
		"rebind.test":        {netip.MustParseAddr("127.0.0.1")},
		"meta.test":          {netip.MustParseAddr("169.254.169.254")},
	}
	tp, pp := strconv.Itoa(tlsUp.port), strconv.Itoa(plainUp.port)
	p := &Policy{Audit: audit, Allow: mustEntries(t,
		"api.allowed.test:"+tp, "*.wild.test:"+tp, "plain.allowed.test:"+pp, "tls.allowed.test",
		"rebind.test:"+tp, "meta.test:80",
		cidrFor(tn.up1, tlsUp.port), cidrFor(tn.up1, plainUp.port), cidrFor(tn.up2, 443))}
	g := newTestGateway(t, tn, p, gatewayOpts{resolver: res, rootCAs: fake.pool, peek: peek})
	return &proxyEnv{testGateway: g, fake: fake, tlsUp: tlsUp, plainUp: plainUp, up443: up443}
}

func TestConnect(t *testing.T) {
	e := newProxyEnv(t, false)
	tp := strconv.Itoa(e.tlsUp.port)
	tests := []struct {
		name       string
		target     string
		sni        string // "" = host of target
		wantStatus int
		wantBody   string
		wantEvent  func(Event) bool
	}{
		{name: "allowed name", target: "api.allowed.test:" + tp, wantStatus: 200, wantBody: "hello from api.allowed.test",
			wantEvent: func(ev Event) bool {
				return ev.Kind == KindConnect && ev.Host == "api.allowed.test" && ev.Verdict == VerdictAllowed && ev.Bytes > 0
			}},
		{name: "wildcard", target: "x.wild.test:" + tp, wantStatus: 200, wantBody: "hello from api.allowed.test"},
		{name: "denied name", target: "evil.test:443", wantStatus: 403,
			wantEvent: func(ev Event) bool { return ev.Host == "evil.test" && ev.Verdict == VerdictDenied }},
		{name: "wildcard bare suffix", target: "wild.test:" + tp, wantStatus: 403},
		{name: "IP literal", target: "1.2.3.4:443", wantStatus: 403,
			wantEvent: func(ev Event) bool {
				return ev.Host == "1.2.3.4" && strings.Contains(ev.Reason, "IP literal")
			}},
		{name: "wrong port", target: "api.allowed.test:" + strconv.Itoa(e.tlsUp.port+1), wantStatus: 403},
		{name: "allowed CIDR literal", target: netip.AddrPortFrom(e.net.up1, uint16(e.tlsUp.port)).String(),
			sni: "api.allowed.test", wantStatus: 200, wantBody: "hello from api.allowed.test"},
		{name: "rebinding to loopback", target: "rebind.test:" + tp, wantStatus: 502,
			wantEvent: func(ev Event) bool {
				return ev.Host == "rebind.test" && strings.Contains(ev.Reason, "dial guard: 127.0.0.1 is loopback")
			}},
		{name: "metadata", target: "meta.test:80", wantStatus: 502,
			wantEvent: func(ev Event) bool {
				return ev.Host == "meta.test" && strings.Contains(ev.Reason, "169.254.169.254 is link-local")
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, status := e.connect(t, tc.target)
			if status != tc.wantStatus {
				t.Fatalf("CONNECT %s status = %d, want %d", tc.target, status, tc.wantStatus)
			}
			if tc.wantBody != "" {
				sni := tc.sni
				if sni == "" {
					sni, _, _ = net.SplitHostPort(tc.target)
				}
				if got := getOverTLS(t, c, sni, e.fake); got != tc.wantBody {
					t.Errorf("GET through CONNECT %s = %q, want %q", tc.target, got, tc.wantBody)
				}
				c.Close()
			}
			if tc.wantEvent != nil {
				e.events.wait(t, tc.name, tc.wantEvent)
			}
		})
	}
}

// getOverTLS does one GET / over c with TLS to sni and returns the body.
func getOverTLS(t *testing.T, c net.Conn, sni string, fake *fakeCA) string {
	t.Helper()
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: fake.pool})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake with %s through tunnel: %v", sni, err)
	}
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	return readBody(t, resp)
}

func TestConnectSNIMismatch(t *testing.T) {
	e := newProxyEnv(t, false)
	target := "api.allowed.test:" + strconv.Itoa(e.tlsUp.port)
	c, status := e.connect(t, target)
	if status != 200 {
		t.Fatalf("CONNECT %s status = %d, want 200", target, status)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "evil.test", RootCAs: e.fake.pool})
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err == nil {
		t.Fatalf("TLS handshake with SNI evil.test inside CONNECT %s succeeded, want the tunnel closed", target)
	}
	e.events.wait(t, "SNI mismatch", func(ev Event) bool {
		return ev.Kind == KindTLS && ev.Verdict == VerdictDenied && strings.Contains(ev.Reason, `SNI "evil.test" does not match CONNECT host "api.allowed.test"`)
	})
	if n := len(e.tlsUp.requests()); n != 0 {
		t.Errorf("upstream saw %d requests, want 0", n)
	}
}

func TestPlainHTTPProxy(t *testing.T) {
	e := newProxyEnv(t, false)
	client := e.proxyClient(nil)
	pp := strconv.Itoa(e.plainUp.port)
	tests := []struct {
		name       string
		url        string
		wantStatus int
	}{
		{"allowed", "http://plain.allowed.test:" + pp + "/ok", 200},
		{"denied name", "http://evil.test:" + pp + "/", 403},
		{"wrong port", "http://plain.allowed.test:" + strconv.Itoa(e.plainUp.port+1) + "/", 403},
		{"default port not allowed", "http://plain.allowed.test/", 403},
		{"IP literal", "http://1.2.3.4/", 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, tc.url, nil)
			req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
			req.Header.Set("Connection", "X-Hop")
			req.Header.Set("X-Hop", "1")
			req.Header.Set("X-Kept", "1")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET %s via proxy: %v", tc.url, err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("GET %s via proxy status = %d (%q), want %d", tc.url, resp.StatusCode, body, tc.wantStatus)
			}
		})
	}
	reqs := e.plainUp.requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream saw %d requests, want 1", len(reqs))
	}
	h := reqs[0].Header
	for _, k := range []string{"Proxy-Authorization", "X-Hop", "Connection"} {
		if h.Get(k) != "" {
			t.Errorf("upstream received hop-by-hop header %s = %q", k, h.Get(k))
		}
	}
	if h.Get("X-Kept") != "1" {
		t.Errorf("upstream X-Kept = %q, want 1", h.Get("X-Kept"))
	}
	e.events.wait(t, "http allowed", func(ev Event) bool {
		return ev.Kind == KindHTTP && ev.Verdict == VerdictAllowed && ev.Path == "/ok" && ev.Status == 200 && ev.Method == "GET"
	})
}

func TestTransparentHTTP(t *testing.T) {
	e := newProxyEnv(t, false)
	pp := strconv.Itoa(e.plainUp.port)
	tests := []struct {
		name       string
		host       string
		wantStatus int
	}{
		{"allowed host", "plain.allowed.test:" + pp, 200},
		{"spoofed host", "evil.test:" + pp, 403},
		{"IP host", e.net.up1.String() + ":" + pp, 200}, // CIDR entry names it
		{"metadata IP host", "169.254.169.254", 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialer(e.net.job).Dial("tcp4", e.reg.Addrs().TransparentHTTP.String())
			if err != nil {
				t.Fatalf("dialing transparent HTTP: %v", err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /t HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tc.host)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("reading response: %v", err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("GET with Host %s status = %d (%q), want %d", tc.host, resp.StatusCode, body, tc.wantStatus)
			}
		})
	}
	e.events.wait(t, "spoofed host", func(ev Event) bool {
		return ev.Kind == KindHTTP && ev.Host == "evil.test" && ev.Verdict == VerdictDenied
	})
}

func TestTransparentTLS(t *testing.T) {
	e := newProxyEnv(t, false)
	tests := []struct {
		name   string
		sni    string
		wantOK bool
	}{
		{"allowed SNI", "tls.allowed.test", true},
		{"denied SNI", "evil.test", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialer(e.net.job).Dial("tcp4", e.reg.Addrs().TransparentTLS.String())
			if err != nil {
				t.Fatalf("dialing transparent TLS: %v", err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			tc2 := tls.Client(c, &tls.Config{ServerName: tc.sni, RootCAs: e.fake.pool})
			err = tc2.Handshake()
			if !tc.wantOK {
				if err == nil {
					t.Fatalf("TLS handshake with SNI %s succeeded, want refused", tc.sni)
				}
				e.events.wait(t, "denied SNI", func(ev Event) bool {
					return ev.Kind == KindTLS && ev.Host == tc.sni && ev.Verdict == VerdictDenied
				})
				return
			}
			if err != nil {
				t.Fatalf("TLS handshake with SNI %s: %v", tc.sni, err)
			}
			fmt.Fprintf(tc2, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tc.sni)
			resp, err := http.ReadResponse(bufio.NewReader(tc2), nil)
			if err != nil {
				t.Fatalf("reading response: %v", err)
			}
			if body := readBody(t, resp); body != "hello from tls.allowed.test" {
				t.Errorf("body = %q, want hello from tls.allowed.test", body)
			}
		})
	}
	// No ClientHello at all.
	c, err := dialer(e.net.job).Dial("tcp4", e.reg.Addrs().TransparentTLS.String())
	if err != nil {
		t.Fatalf("dialing transparent TLS: %v", err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		t.Errorf("plain text on the TLS port got %d bytes back, want the connection closed", n)
	}
	e.events.wait(t, "not TLS", func(ev Event) bool { return ev.Reason == "not a TLS connection" })
}

func TestSourceAddressRejected(t *testing.T) {
	e := newProxyEnv(t, false)
	a := e.reg.Addrs()
	for name, addr := range map[string]netip.AddrPort{"proxy": a.Proxy, "http": a.TransparentHTTP, "tls": a.TransparentTLS} {
		t.Run(name, func(t *testing.T) {
			c, err := dialer(e.net.stranger).Dial("tcp4", addr.String())
			if err != nil {
				t.Fatalf("dialing %s: %v", addr, err)
			}
			defer c.Close()
			fmt.Fprintf(c, "CONNECT api.allowed.test:%d HTTP/1.1\r\n\r\n", e.tlsUp.port)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, _ := io.Copy(io.Discard, c); n != 0 {
				t.Errorf("connection from %s to %s got %d bytes, want closed", e.net.stranger, addr, n)
			}
		})
	}
	e.events.wait(t, "stranger", func(ev Event) bool {
		return ev.Verdict == VerdictDenied && ev.Addr == e.net.stranger.String() && ev.Kind == KindConnect
	})
}

func TestAuditMode(t *testing.T) {
	e := newProxyEnv(t, true)
	// evil.test is not in the allowlist; audit mode lets it through (the
	// CIDR entry lets the guard dial up2:443) and records it.
	c, status := e.connect(t, "evil.test:443")
	if status != 200 {
		t.Fatalf("audit CONNECT evil.test:443 status = %d, want 200", status)
	}
	if got := getOverTLS(t, c, "evil.test", e.fake); got != "hello from tls.allowed.test" {
		t.Errorf("audit GET = %q", got)
	}
	c.Close()
	e.events.wait(t, "audit connect", func(ev Event) bool {
		return ev.Kind == KindConnect && ev.Host == "evil.test" && ev.Verdict == VerdictAllowed
	})
	// Still guarded.
	if _, status := e.connect(t, "meta.test:80"); status != 502 {
		t.Errorf("audit CONNECT meta.test:80 status = %d, want 502 (dial guard)", status)
	}
	if _, status := e.connect(t, "198.51.100.99:443"); status != 403 {
		t.Errorf("audit CONNECT 198.51.100.99:443 status = %d, want 403", status)
	}
}

// A client that half-closes its side after sending the request (printf |
// nc) still gets the response: the upstream request must not be tied to
// the client's read side.
func TestPlainHTTPProxyHalfClose(t *testing.T) {
	e := newProxyEnv(t, false)
	c, err := dialer(e.net.job).Dial("tcp", e.reg.Addrs().Proxy.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	target := "plain.allowed.test:" + strconv.Itoa(e.plainUp.port)
	fmt.Fprintf(c, "GET http://%s/half HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, target)
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response after a half-close: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status after a half-close = %d, want 200", resp.StatusCode)
	}
}
