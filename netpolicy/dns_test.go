package netpolicy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestDNS(t *testing.T) {
	tn := newTestNet()
	g := newTestGateway(t, tn, &Policy{Allow: mustEntries(t, "api.allowed.test", "*.wild.test:443")}, gatewayOpts{})
	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		wantRcode int
		wantA     bool
	}{
		{"allowed A", "api.allowed.test.", dns.TypeA, dns.RcodeSuccess, true},
		{"allowed A mixed case", "API.Allowed.TEST.", dns.TypeA, dns.RcodeSuccess, true},
		{"wildcard A", "x.wild.test.", dns.TypeA, dns.RcodeSuccess, true},
		{"wildcard bare suffix", "wild.test.", dns.TypeA, dns.RcodeNameError, false},
		{"denied A", "evil.test.", dns.TypeA, dns.RcodeNameError, false},
		{"allowed AAAA empty", "api.allowed.test.", dns.TypeAAAA, dns.RcodeSuccess, false},
		{"denied AAAA", "evil.test.", dns.TypeAAAA, dns.RcodeNameError, false},
		{"TXT refused", "api.allowed.test.", dns.TypeTXT, dns.RcodeRefused, false},
		{"TXT tunnel refused", "aGVsbG8.evil.test.", dns.TypeTXT, dns.RcodeRefused, false},
		{"NULL refused", "api.allowed.test.", dns.TypeNULL, dns.RcodeRefused, false},
		{"ANY refused", "api.allowed.test.", dns.TypeANY, dns.RcodeRefused, false},
		{"MX refused", "api.allowed.test.", dns.TypeMX, dns.RcodeRefused, false},
	}
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: 3 * time.Second}
		if proto == "udp" {
			c.Dialer = &net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(tn.job, 0))}
		} else {
			c.Dialer = dialer(tn.job)
		}
		for _, tc := range tests {
			t.Run(proto+"/"+tc.name, func(t *testing.T) {
				m := new(dns.Msg)
				m.SetQuestion(tc.qname, tc.qtype)
				resp, _, err := c.Exchange(m, g.reg.Addrs().DNS.String())
				if err != nil {
					t.Fatalf("Exchange(%s %s): %v", tc.qname, dns.TypeToString[tc.qtype], err)
				}
				if resp.Rcode != tc.wantRcode {
					t.Errorf("Exchange(%s %s) rcode = %s, want %s", tc.qname, dns.TypeToString[tc.qtype],
						dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.wantRcode])
				}
				if !tc.wantA {
					if len(resp.Answer) != 0 {
						t.Errorf("Exchange(%s %s) answers = %v, want none", tc.qname, dns.TypeToString[tc.qtype], resp.Answer)
					}
					return
				}
				if len(resp.Answer) != 1 {
					t.Fatalf("Exchange(%s) answers = %v, want one A", tc.qname, resp.Answer)
				}
				a, ok := resp.Answer[0].(*dns.A)
				if !ok || a.A.String() != tn.gateway.String() {
					t.Errorf("Exchange(%s) answer = %v, want A %s (the gateway)", tc.qname, resp.Answer[0], tn.gateway)
				}
			})
		}
	}
	ev := g.events.wait(t, "denied dns", func(ev Event) bool {
		return ev.Kind == KindDNS && ev.Host == "evil.test" && ev.Method == "A" && ev.Verdict == VerdictDenied
	})
	if ev.Job != "job-1" {
		t.Errorf("dns event job = %q, want job-1", ev.Job)
	}
	g.events.wait(t, "allowed dns", func(ev Event) bool {
		return ev.Kind == KindDNS && ev.Host == "api.allowed.test" && ev.Verdict == VerdictAllowed
	})
	g.events.wait(t, "refused TXT", func(ev Event) bool {
		return ev.Kind == KindDNS && ev.Method == "TXT" && ev.Verdict == VerdictDenied
	})
}

func TestDNSFromStranger(t *testing.T) {
	tn := newTestNet()
	g := newTestGateway(t, tn, &Policy{Allow: mustEntries(t, "api.allowed.test")}, gatewayOpts{})
	m := new(dns.Msg)
	m.SetQuestion("api.allowed.test.", dns.TypeA)
	udp := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond,
		Dialer: &net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(tn.stranger, 0))}}
	if resp, _, err := udp.Exchange(m, g.reg.Addrs().DNS.String()); err == nil {
		t.Errorf("UDP query from %s answered %v, want no answer", tn.stranger, resp)
	}
	tcp := &dns.Client{Net: "tcp", Timeout: 2 * time.Second, Dialer: dialer(tn.stranger)}
	if resp, _, err := tcp.Exchange(m, g.reg.Addrs().DNS.String()); err == nil {
		t.Errorf("TCP query from %s answered %v, want connection closed", tn.stranger, resp)
	}
	g.events.wait(t, "stranger", func(ev Event) bool {
		return ev.Verdict == VerdictDenied && ev.Addr == tn.stranger.String()
	})
}
