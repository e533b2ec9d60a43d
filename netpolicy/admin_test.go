package netpolicy

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// TestAdminChoicesReachPrivateUpstreams: in enforcing mode, an address
// from the admin's [gateway.hosts] and an address inside a CIDR entry of
// the admin's ceiling pass the dial guard although they are private; a
// private address the admin did not name is refused, and the body tells
// the job which rule refused it. No packet leaves: a hook after the guard
// aborts every dial before connect(2).
func TestAdminChoicesReachPrivateUpstreams(t *testing.T) {
	tn := newTestNet()
	hosts := HostsResolver{
		Hosts: map[string]netip.Addr{"db.internal": netip.MustParseAddr("10.1.2.3")},
		Next: StaticResolver{
			"pg.corp.test":    {netip.MustParseAddr("10.1.2.7")},
			"stray.corp.test": {netip.MustParseAddr("10.9.9.9")},
		},
	}
	policy := &Policy{Allow: mustEntries(t, "db.internal:5432", "pg.corp.test:5432", "stray.corp.test:5432",
		"10.1.2.0/24:5432")} // the ceiling's CIDR entry, as runner.Network.policy adds it
	g := newTestGateway(t, tn, policy, gatewayOpts{resolver: hosts})
	var mu sync.Mutex
	var dialed []string
	errAbort := errors.New("test: connect(2) not made")
	g.gw.dialHook = func(addr string) error {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		return errAbort
	}
	for _, tc := range []struct {
		target   string
		wantDial string
		wantBody string
	}{
		{"db.internal:5432", "10.1.2.3:5432", "upstream unreachable"},
		{"pg.corp.test:5432", "10.1.2.7:5432", "upstream unreachable"},
		{"stray.corp.test:5432", "", "private address not allowed by the admin"},
		{"10.1.2.9:5432", "10.1.2.9:5432", "upstream unreachable"},
	} {
		mu.Lock()
		dialed = nil
		mu.Unlock()
		c, status := g.connect(t, tc.target)
		c.Close()
		if status != http.StatusBadGateway {
			t.Errorf("CONNECT %s = %d, want 502 (the hook aborts every dial)", tc.target, status)
		}
		mu.Lock()
		got := strings.Join(dialed, ",")
		mu.Unlock()
		if got != tc.wantDial {
			t.Errorf("CONNECT %s: the guard admitted %q, want %q", tc.target, got, tc.wantDial)
		}
		body := connectBody(t, g, tc.target)
		if !strings.Contains(body, tc.wantBody) {
			t.Errorf("CONNECT %s body %q, want it to name %q", tc.target, body, tc.wantBody)
		}
		if strings.Contains(body, "10.1.2.") && !strings.HasPrefix(tc.target, "10.") {
			t.Errorf("CONNECT %s body names the upstream address: %q", tc.target, body)
		}
	}
	// A name outside the policy: 403 naming the rule.
	resp, err := g.proxyClient(nil).Get("http://elsewhere.test/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, RuleNotInPolicy) {
		t.Errorf("GET outside the policy: %d %q, want 403 naming %q", resp.StatusCode, body, RuleNotInPolicy)
	}
}

// connectBody returns the body of the proxy's answer to CONNECT target.
func connectBody(t *testing.T, g *testGateway, target string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodConnect, "http://"+g.reg.Addrs().Proxy.String(), nil)
	req.Host = target
	req.URL.Opaque = target
	tr := &http.Transport{DialContext: dialer(g.net.job).DialContext}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return readBody(t, resp)
}

func TestGuardAdminAddress(t *testing.T) {
	g := NewDialGuard(GuardConfig{HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	p := &Policy{}
	db := netip.MustParseAddrPort("10.1.2.3:5432")
	var ge *GuardError
	if err := g.check(db, p, netip.Addr{}); !errors.As(err, &ge) || ge.Rule != RulePrivate {
		t.Errorf("private address without an admin choice: %v, want the private rule", err)
	}
	if err := g.check(db, p, db.Addr()); err != nil {
		t.Errorf("private address from the admin's hosts table: %v, want allowed", err)
	}
	for _, a := range []string{"127.0.0.1:80", "169.254.169.254:80"} {
		ap := netip.MustParseAddrPort(a)
		if err := g.check(ap, p, ap.Addr()); !errors.As(err, &ge) || ge.Rule != RuleNeverDialed {
			t.Errorf("%s from the hosts table: %v, want never dialed", a, err)
		}
	}
}
