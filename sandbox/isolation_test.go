package sandbox

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// hostAddrs returns the host's global IPv4 addresses outside the sandbox
// pool and the fake internet link.
func hostAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatalf("listing host addresses: %v", err)
	}
	pool := netip.MustParsePrefix(DefaultPool)
	var out []netip.Addr
	for _, a := range ifs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().Is4() || p.Addr().IsLoopback() || pool.Contains(p.Addr()) ||
			netip.MustParsePrefix("198.18.0.0/15").Contains(p.Addr()) {
			continue
		}
		out = append(out, p.Addr())
	}
	return out
}

// listenInNS opens a greeting TCP listener on 0.0.0.0:0 inside ns.
func listenInNS(t *testing.T, ns string) int {
	t.Helper()
	var ln net.Listener
	err := testenv.InNetNS(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", "0.0.0.0:0")
		return err
	})
	if err != nil {
		t.Fatalf("listening in %s: %v", ns, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "job-listener")
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).Port
}

func TestJobReachesOnlyItsGateway(t *testing.T) {
	testenv.RequireRoot(t)
	for _, b := range firewallBackends {
		t.Run(b, func(t *testing.T) { testJobReachesOnlyItsGateway(t, b) })
	}
}

func testJobReachesOnlyItsGateway(t *testing.T, backend string) {
	fi := testenv.NewFakeInternet(t)
	probe := testenv.BuildProbe(t)
	m := newManagerFW(t, uniqueRunnerID(), "", newBackend(t, backend))
	n1 := setup(t, m, "job-a")
	n2 := setup(t, m, "job-b")

	// Sanity: the fake internet answers the host, so "unreachable from the
	// job" below means the sandbox blocked it.
	if line := dialLine(t, netip.AddrPortFrom(testenv.AllowedAddr, testenv.FakeEchoPort).String()); !strings.Contains(line, "host=allowed") {
		t.Fatalf("fake internet echo from the host = %q, want host=allowed", line)
	}

	gw1Proxy := testenv.ListenHost(t, netip.AddrPortFrom(n1.GatewayIP, proxyPort).String())
	gw1TLS := testenv.ListenHost(t, netip.AddrPortFrom(n1.GatewayIP, transparentTLS).String())
	gw2Proxy := testenv.ListenHost(t, netip.AddrPortFrom(n2.GatewayIP, proxyPort).String())
	anyPort := testenv.ListenHost(t, "0.0.0.0:0")
	wildPort := anyPort.Addr().(*net.TCPAddr).Port
	loopback := testenv.ListenHost(t, "127.0.0.1:0")
	job2Port := listenInNS(t, n2.NetNS)
	gw1DNS := testenv.ServeFakeDNS(t, netip.AddrPortFrom(n1.GatewayIP, dnsPort).String())

	type tc struct {
		name   string
		args   []string
		wantOK bool
		want   string // substring of the result line
	}
	tests := []tc{
		{"own gateway on the proxy port", []string{"tcp", netip.AddrPortFrom(n1.GatewayIP, proxyPort).String()}, true, "host-listener " + gw1Proxy.AddrPort()},
		{"transparent TLS redirected to the gateway", []string{"tcp", netip.AddrPortFrom(testenv.AllowedAddr, 443).String()}, true, "host-listener " + gw1TLS.AddrPort()},
		{"DNS over UDP to own gateway", []string{"dns", "api.allowed.test", "--server", gw1DNS}, true, "rcode=NOERROR answers=203.0.113.10"},
		{"DNS over TCP to own gateway", []string{"dns", "--tcp", "evil.test", "--server", gw1DNS}, true, "answers=203.0.113.20"},
		{"DNS to another server", []string{"dns", "api.allowed.test", "--server", netip.AddrPortFrom(testenv.AllowedAddr, dnsPort).String()}, false, "fail "},
		{"own gateway on another port", []string{"tcp", fmt.Sprintf("%s:%d", n1.GatewayIP, wildPort)}, false, "connection refused"},
		{"host loopback listener", []string{"tcp", loopback.AddrPort()}, false, "connection refused"},
		{"other sandbox's gateway", []string{"tcp", netip.AddrPortFrom(n2.GatewayIP, proxyPort).String()}, false, "connection refused"},
		{"other sandbox's job", []string{"tcp", fmt.Sprintf("%s:%d", n2.JobIP, job2Port)}, false, "connection refused"},
		{"fake internet echo", []string{"tcp", netip.AddrPortFrom(testenv.AllowedAddr, testenv.FakeEchoPort).String()}, false, "connection refused"},
		{"metadata address", []string{"tcp", netip.AddrPortFrom(testenv.MetadataAddr, testenv.FakeEchoPort).String()}, false, "connection refused"},
		{"plain HTTP without a transparent proxy listening", []string{"http", "http://" + testenv.ForbiddenAddr.String() + "/"}, false, "connection refused"},
		{"IPv6 loopback", []string{"tcp6", "[::1]:80"}, false, ""},
		{"IPv6 gateway link-local", []string{"tcp6", "[fe80::1%eth0]:53"}, false, ""},
		{"raw sockets", []string{"raw"}, false, "packet=operation not permitted icmp=operation not permitted"},
		{"ping the gateway", []string{"ping", n1.GatewayIP.String()}, false, "permission denied"},
		{"change the firewall", []string{"iptables"}, false, "nftables=operation not permitted"},
	}
	for _, h := range hostAddrs(t) {
		tests = append(tests, tc{"host address " + h.String(), []string{"tcp", fmt.Sprintf("%s:%d", h, wildPort)}, false, "connection refused"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := testenv.RunProbe(context.Background(), t, n1.NetNS, probe, nil, tc.args...)
			if res.OK != tc.wantOK || !strings.Contains(res.Line, tc.want) {
				t.Errorf("probe %v = %q (ok %t), want ok %t and %q", tc.args, res.Line, res.OK, tc.wantOK, tc.want)
			}
		})
	}
	if got := gw2Proxy.Hits() + anyPort.Hits() + loopback.Hits(); got != 0 {
		t.Errorf("forbidden host listeners accepted %d connections, want 0", got)
	}
	if got := gw1Proxy.Hits(); got != 1 {
		t.Errorf("own gateway listener accepted %d connections, want 1", got)
	}
	if r := fi.Requests(); len(r) != 0 {
		t.Errorf("fake internet saw requests %v, want none", r)
	}
}

// TestHostRulesHoldWithoutNamespaceRules removes the in-namespace rules (as
// a job with CAP_NET_ADMIN could) and checks that the host-side rules alone
// still keep the job in.
func TestHostRulesHoldWithoutNamespaceRules(t *testing.T) {
	testenv.RequireRoot(t)
	for _, b := range firewallBackends {
		t.Run(b, func(t *testing.T) { testHostRulesHoldWithoutNamespaceRules(t, b) })
	}
}

func testHostRulesHoldWithoutNamespaceRules(t *testing.T, backend string) {
	testenv.NewFakeInternet(t)
	probe := testenv.BuildProbe(t)
	m := newManagerFW(t, uniqueRunnerID(), "", newBackend(t, backend))
	n := setup(t, m, "job-flush")
	gwProxy := testenv.ListenHost(t, netip.AddrPortFrom(n.GatewayIP, proxyPort).String())
	anyPort := testenv.ListenHost(t, "0.0.0.0:0")

	for _, args := range [][]string{
		{"iptables", "-P", "OUTPUT", "ACCEPT"}, {"iptables", "-P", "INPUT", "ACCEPT"}, {"iptables", "-F"}, {"iptables", "-t", "nat", "-F"},
		{"nft", "flush", "ruleset"},
	} {
		cmd := exec.Command("nsenter", append([]string{"--net=" + n.NetNS, "--"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v in the job namespace: %v: %s", args, err, out)
		}
	}
	tests := []struct {
		name   string
		target string
		wantOK bool
	}{
		{"own gateway on the proxy port", netip.AddrPortFrom(n.GatewayIP, proxyPort).String(), true},
		{"own gateway on another port", fmt.Sprintf("%s:%d", n.GatewayIP, anyPort.Addr().(*net.TCPAddr).Port), false},
		{"fake internet", netip.AddrPortFrom(testenv.AllowedAddr, testenv.FakeEchoPort).String(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := testenv.RunProbe(context.Background(), t, n.NetNS, probe, nil, "tcp", tc.target)
			if res.OK != tc.wantOK {
				t.Errorf("probe tcp %s = %q, want ok %t", tc.target, res.Line, tc.wantOK)
			}
		})
	}
	if anyPort.Hits() != 0 || gwProxy.Hits() != 1 {
		t.Errorf("listener hits: other port %d (want 0), proxy %d (want 1)", anyPort.Hits(), gwProxy.Hits())
	}
}

func dialLine(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatalf("dialing %s from the host: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from %s: %v", addr, err)
	}
	return strings.TrimSpace(line)
}
