package netpolicy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestUnregisterClosesEverything(t *testing.T) {
	e := newProxyEnv(t, false)
	target := "api.allowed.test:" + strconv.Itoa(e.tlsUp.port)
	c, status := e.connect(t, target)
	if status != 200 {
		t.Fatalf("CONNECT %s = %d, want 200", target, status)
	}
	// One keep-alive request, so the tunnel is spliced and the upstream
	// stays open and idle.
	tc := tls.Client(c, &tls.Config{ServerName: "api.allowed.test", RootCAs: e.fake.pool})
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("GET through tunnel: %v", err)
	}
	readBody(t, resp)
	// An idle keep-alive connection on the transparent HTTP listener.
	idle, err := dialer(e.net.job).Dial("tcp4", e.reg.Addrs().TransparentHTTP.String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	addrs := e.reg.Addrs()
	if err := e.reg.Close(); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	if err := e.reg.Close(); err != nil {
		t.Errorf("second Unregister: %v, want nil", err)
	}
	for _, conn := range []net.Conn{c, idle} {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, conn); err != nil {
			t.Errorf("reading from in-flight connection after Unregister: %v, want EOF", err)
		}
	}
	e.events.wait(t, "tunnel end", func(ev Event) bool {
		return ev.Kind == KindConnect && ev.Host == "api.allowed.test" && ev.Verdict == VerdictAllowed && ev.Bytes > 0
	})
	for name, a := range map[string]netip.AddrPort{"dns": addrs.DNS, "proxy": addrs.Proxy, "http": addrs.TransparentHTTP, "tls": addrs.TransparentTLS} {
		if c, err := dialer(e.net.job).Dial("tcp4", a.String()); err == nil {
			c.Close()
			t.Errorf("%s listener %s still accepts after Unregister", name, a)
		}
	}
	// The addresses can be registered again at once.
	reg, err := e.gw.Register(context.Background(), JobConfig{JobID: "job-1b", GatewayIP: e.net.gateway, JobIP: e.net.job, Policy: &Policy{}})
	if err != nil {
		t.Fatalf("Register after Unregister: %v", err)
	}
	if err := reg.Close(); err != nil {
		t.Errorf("Unregister: %v", err)
	}
}

func TestRegisterErrors(t *testing.T) {
	tn := newTestNet()
	g := newTestGateway(t, tn, &Policy{}, gatewayOpts{})
	other := newTestNet()
	noCA, err := NewGateway(GatewayConfig{Resolver: StaticResolver{}, Ports: &Ports{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = noCA.Close() })
	cred := Credential{GrantID: "g", Surrogate: "airlock-sur-xxxxxxxx", Hosts: []string{"a.test"}, Value: []byte("v")}
	tests := []struct {
		name    string
		gw      *Gateway
		cfg     JobConfig
		wantErr string
	}{
		{"duplicate id", g.gw, JobConfig{JobID: "job-1", GatewayIP: other.gateway, JobIP: other.job, Policy: &Policy{}}, "already registered"},
		{"duplicate address", g.gw, JobConfig{JobID: "job-x", GatewayIP: tn.gateway, JobIP: other.job, Policy: &Policy{}}, "addresses already used by job job-1"},
		{"no policy", g.gw, JobConfig{JobID: "job-x", GatewayIP: other.gateway, JobIP: other.job}, "no policy"},
		{"empty id", g.gw, JobConfig{GatewayIP: other.gateway, JobIP: other.job, Policy: &Policy{}}, "empty job id"},
		{"IPv6 gateway", g.gw, JobConfig{JobID: "job-x", GatewayIP: netip.MustParseAddr("::1"), JobIP: other.job, Policy: &Policy{}}, "not IPv4"},
		{"credentials without CA", noCA, JobConfig{JobID: "job-x", GatewayIP: other.gateway, JobIP: other.job, Policy: &Policy{Credentials: []Credential{cred}}}, "no CA"},
		{"short surrogate", g.gw, JobConfig{JobID: "job-x", GatewayIP: other.gateway, JobIP: other.job,
			Policy: &Policy{Credentials: []Credential{{GrantID: "g", Surrogate: "short", Hosts: []string{"a.test"}, Value: []byte("v")}}}}, "surrogate shorter"},
		{"unbound credential", g.gw, JobConfig{JobID: "job-x", GatewayIP: other.gateway, JobIP: other.job,
			Policy: &Policy{Credentials: []Credential{{GrantID: "g", Surrogate: "airlock-sur-yyyyyyyy", Value: []byte("v")}}}}, "no bound hosts"},
		{"bad extra header", g.gw, JobConfig{JobID: "job-x", GatewayIP: other.gateway, JobIP: other.job,
			Policy: &Policy{Credentials: []Credential{{GrantID: "g", Surrogate: "airlock-sur-yyyyyyyy", Hosts: []string{"a.test"}, Value: []byte("v"),
				ExtraHeaders: []string{"Job Token"}}}}}, `extra header "Job Token"`},
		{"bad query parameter", g.gw, JobConfig{JobID: "job-x", GatewayIP: other.gateway, JobIP: other.job,
			Policy: &Policy{Credentials: []Credential{{GrantID: "g", Surrogate: "airlock-sur-yyyyyyyy", Hosts: []string{"a.test"}, Value: []byte("v"),
				QueryParams: []string{"a&b"}}}}}, `query parameter "a&b"`},
		{"address in use", g.gw, JobConfig{JobID: "job-x", GatewayIP: netip.MustParseAddr("192.0.2.1"), JobIP: other.job, Policy: &Policy{}}, "listening on"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg, err := tc.gw.Register(context.Background(), tc.cfg)
			if err == nil {
				_ = reg.Close()
				t.Fatalf("Register(%+v) succeeded, want error containing %q", tc.cfg, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Register error = %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
	// The failed registrations left nothing behind: the other net is free
	// and the credential's surrogate can be registered on retry.
	withCred := &Policy{Credentials: []Credential{cred}}
	if _, err := g.gw.Register(context.Background(), JobConfig{JobID: "job-x", GatewayIP: netip.MustParseAddr("192.0.2.1"), JobIP: other.job, Policy: withCred}); err == nil {
		t.Fatalf("Register on a foreign address succeeded")
	}
	reg, err := g.gw.Register(context.Background(), JobConfig{JobID: "job-x", GatewayIP: other.gateway, JobIP: other.job, Policy: withCred})
	if err != nil {
		t.Fatalf("Register after failures: %v", err)
	}
	if err := reg.Close(); err != nil {
		t.Error(err)
	}
	if _, err := NewGateway(GatewayConfig{}); err == nil {
		t.Errorf("NewGateway without resolver succeeded")
	}
}

func TestSummaryAndDrops(t *testing.T) {
	e := newProxyEnv(t, false)
	for _, target := range []string{"evil.test:443", "evil.test:443", "1.2.3.4:443"} {
		e.connect(t, target)
	}
	s := e.reg.Summary()
	if s.Denied != 3 || s.DeniedDestinations["evil.test:443"] != 2 || s.DeniedDestinations["1.2.3.4:443"] != 1 {
		t.Errorf("Summary = %+v, want 3 denied (evil.test:443 x2, 1.2.3.4:443)", s)
	}
	if str := s.String(); !strings.Contains(str, "denied evil.test:443 (2)") || !strings.Contains(str, "0 allowed, 3 denied") {
		t.Errorf("Summary.String() = %q", str)
	}

	// A sink that blocks: the data path goes on, and drops are counted.
	block := make(chan struct{})
	gw, err := NewGateway(GatewayConfig{Resolver: StaticResolver{}, Ports: &Ports{}, EventBuffer: 1,
		Events: EventSinkFunc(func(Event) { <-block })})
	if err != nil {
		t.Fatal(err)
	}
	tn := newTestNet()
	reg, err := gw.Register(context.Background(), JobConfig{JobID: "j", GatewayIP: tn.gateway, JobIP: tn.job, Policy: &Policy{}})
	if err != nil {
		t.Fatal(err)
	}
	tg := &testGateway{net: tn, gw: gw, reg: reg}
	for range 5 {
		if _, status := tg.connect(t, "evil.test:443"); status != 403 {
			t.Fatalf("CONNECT evil.test:443 = %d, want 403", status)
		}
	}
	if d := gw.DroppedEvents(); d < 3 {
		t.Errorf("DroppedEvents = %d, want >= 3", d)
	}
	if s := reg.Summary(); s.Denied != 5 {
		t.Errorf("Summary.Denied = %d, want 5 (summary counts dropped events too)", s.Denied)
	}
	close(block)
	if err := gw.Close(); err != nil {
		t.Errorf("Gateway.Close: %v", err)
	}
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatalf("LoadOrCreateCA (create): %v", err)
	}
	for _, f := range []string{CAKeyFile, CACertFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", f, st.Mode().Perm())
		}
	}
	block, _ := pem.Decode(ca.CertPEM())
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !cert.IsCA {
		t.Fatalf("CertPEM is not a CA certificate: %v", err)
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatalf("LoadOrCreateCA (load): %v", err)
	}
	if string(again.CertPEM()) != string(ca.CertPEM()) {
		t.Errorf("reloaded CA differs from the created one")
	}
	leaf, err := again.leaf("bound.test")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "bound.test", Roots: pool}); err != nil {
		t.Errorf("leaf does not verify against the CA: %v", err)
	}
	if l2, _ := again.leaf("bound.test"); l2 != leaf {
		t.Errorf("leaf not cached")
	}
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil || !strings.Contains(err.Error(), "only one of") {
		t.Errorf("LoadOrCreateCA with the certificate missing = %v, want only-one-of error", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CACertFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil {
		t.Errorf("LoadOrCreateCA with a junk certificate succeeded")
	}
}
