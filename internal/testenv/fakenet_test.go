package testenv

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestLookupFake(t *testing.T) {
	tests := []struct {
		name string
		want netip.Addr
		ok   bool
	}{
		{"api.allowed.test", AllowedAddr, true},
		{"API.Allowed.Test.", AllowedAddr, true},
		{"evil.test", ForbiddenAddr, true},
		{"a.wild.test", WildAddr, true},
		{"b.c.wild.test", WildAddr, true},
		{"wild.test", netip.Addr{}, false},
		{"metadata.test", MetadataAddr, true},
		{"example.com", netip.Addr{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := LookupFake(tc.name)
			if got != tc.want || ok != tc.ok {
				t.Errorf("LookupFake(%q) = %v, %t, want %v, %t", tc.name, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestFakeInternetServers(t *testing.T) {
	RequireRoot(t)
	fi := NewFakeInternet(t)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: fi.CA.Pool},
		// Dial the fake address for every name; never a real resolver.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, _ := net.SplitHostPort(addr)
			if a, ok := LookupFake(host); ok {
				addr = net.JoinHostPort(a.String(), port)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
	tests := []struct {
		url  string
		want string
	}{
		{"http://api.allowed.test/x", "fakenet host=allowed addr=203.0.113.10 tls=false sni= hosthdr=api.allowed.test path=/x"},
		{"https://api.allowed.test/y", "fakenet host=allowed addr=203.0.113.10 tls=true sni=api.allowed.test hosthdr=api.allowed.test path=/y"},
		{"https://evil.test/", "host=forbidden addr=203.0.113.20 tls=true sni=evil.test"},
		{"https://x.wild.test/", "host=wild addr=198.51.100.30 tls=true sni=x.wild.test"},
		{"http://169.254.169.254/latest/meta-data/", "host=metadata addr=169.254.169.254"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			resp, err := client.Get(tc.url)
			if err != nil {
				t.Fatalf("GET %s: %v", tc.url, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(body), tc.want) {
				t.Errorf("GET %s = %q, want it to contain %q", tc.url, body, tc.want)
			}
		})
	}
	if got := len(fi.Requests()); got != len(tests) {
		t.Errorf("Requests() has %d entries, want %d", got, len(tests))
	}
	if r := fi.Requests(); len(r) > 0 && (r[0].Host != "allowed" || r[0].Header.Get("User-Agent") == "") {
		t.Errorf("Requests()[0] = %+v, want host allowed with headers", r[0])
	}
}

// TestProbe runs the probe helper unprivileged in a fresh namespace
// connected to nothing, and on the host against the fake internet.
func TestProbe(t *testing.T) {
	RequireRoot(t)
	fi := NewFakeInternet(t)
	probe := BuildProbe(t)
	caFile := fi.CA.WriteFile(t)
	dnsAddr := ServeFakeDNS(t, "127.0.0.1:0")
	hl := ListenHost(t, "127.0.0.1:0")
	host := HostNetNS()
	empty := NewNetNS(t, "airlock-probe")

	tests := []struct {
		name   string
		ns     string
		args   []string
		wantOK bool
		want   string
	}{
		{"tcp echo", host, []string{"tcp", "203.0.113.20:7"}, true, "ok connected fakenet host=forbidden"},
		{"tcp host listener", host, []string{"tcp", hl.AddrPort()}, true, "ok connected host-listener"},
		{"https with sni and ca", host, []string{"http", "https://203.0.113.10/p", "--sni", "api.allowed.test", "--ca", caFile}, true, "ok status=200 fakenet host=allowed addr=203.0.113.10 tls=true sni=api.allowed.test"},
		{"http spoofed host header", host, []string{"http", "--host", "evil.test", "http://203.0.113.10/"}, true, "hosthdr=evil.test"},
		{"https untrusted", host, []string{"http", "https://203.0.113.10/"}, false, "fail "},
		{"dns A", host, []string{"dns", "api.allowed.test", "--server", dnsAddr}, true, "ok rcode=NOERROR answers=203.0.113.10"},
		{"dns tcp", host, []string{"dns", "--tcp", "api.allowed.test", "--server", dnsAddr}, true, "answers=203.0.113.10"},
		{"dns nxdomain", host, []string{"dns", "nope.test", "--type", "TXT", "--server", dnsAddr}, true, "ok rcode=NXDOMAIN answers="},
		{"tcp in an empty namespace", empty, []string{"tcp", "203.0.113.20:7"}, false, "fail "},
		{"raw without capabilities", empty, []string{"raw"}, false, "operation not permitted"},
		{"iptables without capabilities", empty, []string{"iptables"}, false, "nftables=operation not permitted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := RunProbe(context.Background(), t, tc.ns, probe, nil, tc.args...)
			if res.OK != tc.wantOK || !strings.Contains(res.Line, tc.want) {
				t.Errorf("probe %v = %q (ok %t, stderr %q), want ok %t and %q", tc.args, res.Line, res.OK, res.Stderr, tc.wantOK, tc.want)
			}
		})
	}
}
