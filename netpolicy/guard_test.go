package netpolicy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestDialGuard(t *testing.T) {
	hostAddr := netip.MustParseAddr("203.0.113.7")
	g := NewDialGuard(GuardConfig{
		JobPool:   []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")},
		Deny:      []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
		HostAddrs: func() ([]netip.Addr, error) { return []netip.Addr{hostAddr}, nil },
	})
	p := &Policy{Allow: mustEntries(t, "10.1.2.0/24:5432", "127.0.0.1/32:8080", "169.254.169.254/32:80")}
	tests := []struct {
		addr    string
		wantErr string
	}{
		{"127.0.0.1:80", "is loopback"},
		{"127.1.2.3:443", "is loopback"},
		{"[::1]:443", "is loopback"},
		{"169.254.169.254:443", "is link-local"},
		{"[fe80::1]:443", "is link-local"},
		{"10.0.0.5:443", "is private"},
		{"10.1.2.3:443", "is private"}, // CIDR entry is for 5432 only
		{"172.16.0.1:443", "is private"},
		{"192.168.1.1:443", "is private"},
		{"[fd00::1]:443", "is private"},
		{"100.64.0.1:443", "is CGNAT"},
		{"0.0.0.0:443", "unspecified"},
		{"[::]:443", "unspecified"},
		{"224.0.0.1:443", "multicast"},
		{"[ff02::1]:443", "multicast"},
		{"[::ffff:127.0.0.1]:443", "is loopback"},
		{"198.18.3.4:443", "job address pool"},
		{"192.0.2.9:443", "denied range"},
		{"203.0.113.7:443", "address of this host"},
		{"10.1.2.3:5432", ""},
		{"127.0.0.1:8080", ""},
		{"169.254.169.254:80", ""},
		{"93.184.216.34:443", ""},
		{"[2001:db8::1]:443", ""},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			err := g.Check(netip.MustParseAddrPort(tc.addr), p)
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("Check(%s) = %v, want nil", tc.addr, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Check(%s) = %v, want error containing %q", tc.addr, err, tc.wantErr)
			}
		})
	}
}

// TestDialGuardRealHostAddrs checks the default host address source: every
// address of this machine's interfaces is refused.
func TestDialGuardRealHostAddrs(t *testing.T) {
	as, err := interfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	g := NewDialGuard(GuardConfig{})
	for _, a := range as {
		if err := g.Check(netip.AddrPortFrom(a, 443), &Policy{}); err == nil {
			t.Errorf("Check(%s:443) = nil, want refused (host address)", a)
		}
	}
}

// TestDialGuardControl dials through net.Dialer with the guard: loopback is
// refused before connect(2), an explicitly allowed loopback CIDR connects.
func TestDialGuardControl(t *testing.T) {
	tn := newTestNet()
	addr := serveTCP(t, tn.up1, func(net.Conn) {})
	g := NewDialGuard(GuardConfig{})
	for _, tc := range []struct {
		name   string
		policy *Policy
		wantOK bool
	}{
		{"denied", &Policy{}, false},
		{"CIDR allowed", &Policy{Allow: mustEntries(t, cidrFor(tn.up1, int(addr.Port())))}, true},
		{"CIDR other port", &Policy{Allow: mustEntries(t, cidrFor(tn.up1, int(addr.Port())+1))}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := net.Dialer{Control: g.Control(tc.policy)}
			c, err := d.DialContext(context.Background(), "tcp4", addr.String())
			if tc.wantOK {
				if err != nil {
					t.Fatalf("guarded dial %s: %v", addr, err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("guarded dial %s succeeded, want refused", addr)
			}
			var opErr *net.OpError
			if !errors.As(err, &opErr) || !strings.Contains(err.Error(), "dial guard") {
				t.Errorf("guarded dial %s error = %v, want a dial guard error", addr, err)
			}
		})
	}
}

func TestResolvers(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	static := StaticResolver{"api.allowed.test": {a}, "*.wild.test": {b}}
	c := netip.MustParseAddr("192.0.2.3")
	hosts := HostsResolver{Hosts: map[string]netip.Addr{"db.internal": a, "*.corp.internal": c, "exact.corp.internal": b}, Next: static}
	hostsOnly := HostsResolver{Hosts: map[string]netip.Addr{"*.corp.internal": c}}
	tests := []struct {
		r    Resolver
		host string
		want netip.Addr
	}{
		{static, "api.allowed.test", a},
		{static, "API.allowed.test.", a},
		{static, "x.wild.test", b},
		{static, "x.y.wild.test", b},
		{static, "wild.test", netip.Addr{}},
		{static, "evil.test", netip.Addr{}},
		{hosts, "db.internal", a},
		{hosts, "x.wild.test", b},
		{hosts, "evil.test", netip.Addr{}},
		{hosts, "git.corp.internal", c},
		{hosts, "a.b.corp.internal", c},
		{hosts, "exact.corp.internal", b},
		{hostsOnly, "corp.internal", netip.Addr{}},
		{hostsOnly, "x.wild.test", netip.Addr{}},
		{HostsResolver{}, "evil.test", netip.Addr{}},
	}
	for _, tc := range tests {
		got, err := tc.r.LookupIP(context.Background(), tc.host)
		if !tc.want.IsValid() {
			var dnsErr *net.DNSError
			if err == nil || !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
				t.Errorf("LookupIP(%q) = %v, %v; want not found", tc.host, got, err)
			}
			continue
		}
		if err != nil || len(got) != 1 || got[0] != tc.want {
			t.Errorf("LookupIP(%q) = %v, %v; want [%s]", tc.host, got, err, tc.want)
		}
	}
}

func TestParseHosts(t *testing.T) {
	got, err := ParseHosts(map[string]string{"DB.internal.": "10.1.2.3", "*.corp.internal": "10.1.2.4"})
	if err != nil || got["db.internal"] != netip.MustParseAddr("10.1.2.3") || got["*.corp.internal"] != netip.MustParseAddr("10.1.2.4") {
		t.Errorf("ParseHosts = %v, %v; want db.internal -> 10.1.2.3 and *.corp.internal -> 10.1.2.4", got, err)
	}
	if _, err := ParseHosts(map[string]string{"*.": "10.1.2.3"}); err == nil {
		t.Errorf("ParseHosts accepted a bare wildcard")
	}
	_, err = ParseHosts(map[string]string{"bad name": "10.1.2.3", "ok.internal": "not-an-ip"})
	if err == nil || !strings.Contains(err.Error(), `"bad name"`) || !strings.Contains(err.Error(), `"ok.internal"`) {
		t.Errorf("ParseHosts error = %v, want both bad entries named", err)
	}
}
