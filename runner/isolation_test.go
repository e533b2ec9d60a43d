package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/secrets"
)

// The isolation suite runs probes inside real job containers of a runner
// built by Open (Docker executor, sandbox, firewall, egress gateway, audit)
// in front of the fake internet, and checks what gets out and what the
// gateway records.

// isoCase is one probe and what it must show.
type isoCase struct {
	name string
	cmd  string
	// want is the required start of the probe's line: "ok status=200",
	// "fail", ... "{G}" stands for the job's gateway address.
	want string
	// contains are further substrings of the line.
	contains []string
	// denied is a destination the gateway's summary must count as denied
	// ("host:port", or "host" for DNS); auditHost the host of a denial
	// record (egress_denied or dns_refused) in the audit trail.
	denied    string
	auditHost string
}

const isoCAFlag = ` --ca "$` + isoCAVar + `"`

// isoEgress is what the main probe job declares (and its ceiling allows).
var isoEgress = []string{"api.allowed.test", "*.wild.test", "metadata.test", "rebind-loopback.test"}

func isoWorkCases() []isoCase {
	return []isoCase{
		{name: "http-proxy", cmd: "probe http http://api.allowed.test/", want: "ok status=200", contains: []string{"host=allowed", "tls=false"}},
		{name: "https-proxy", cmd: "probe http https://api.allowed.test/" + isoCAFlag, want: "ok status=200", contains: []string{"host=allowed", "tls=true", "sni=api.allowed.test"}},
		{name: "http-transparent", cmd: isoNoProxy + "probe http http://api.allowed.test/", want: "ok status=200", contains: []string{"host=allowed"}},
		{name: "https-transparent", cmd: isoNoProxy + "probe http https://api.allowed.test/" + isoCAFlag, want: "ok status=200", contains: []string{"host=allowed", "tls=true", "sni=api.allowed.test"}},
		{name: "wget-proxy", cmd: "wget -q -O - http://api.allowed.test/", want: "fakenet host=allowed"},
		{name: "wget-transparent", cmd: isoNoProxy + "wget -q -O - http://api.allowed.test/", want: "fakenet host=allowed"},
		{name: "wildcard-proxy", cmd: "probe http https://" + isoWildName + "/" + isoCAFlag, want: "ok status=200", contains: []string{"host=wild", "sni=" + isoWildName}},
		{name: "wildcard-transparent", cmd: isoNoProxy + "probe http http://" + isoWildName + "/", want: "ok status=200", contains: []string{"host=wild"}},
		{name: "dns-answers-gateway", cmd: "probe dns api.allowed.test", want: "ok rcode=NOERROR answers={G}"},
		{name: "dns-aaaa-empty", cmd: "probe dns api.allowed.test --type AAAA", want: "ok rcode=NOERROR answers="},
		// The gateway dials what the name resolves to, never the address
		// the job connected to.
		{name: "host-header-picks-upstream", cmd: isoNoProxy + "probe http http://" + testenv.ForbiddenAddr.String() + "/ --host api.allowed.test", want: "ok status=200", contains: []string{"host=allowed"}},
		// An absolute URI names the destination; a different Host header
		// neither changes it nor reaches the upstream. (stdin stays open:
		// the gateway, like any Go server, drops a request whose client
		// half-closes before the answer.)
		{name: "proxy-absolute-uri-wins", cmd: `(printf 'GET http://api.allowed.test/ HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n'; sleep 2) | nc $G ` + strconv.Itoa(netpolicy.ProxyPort), want: "fakenet host=allowed", contains: []string{"hosthdr=api.allowed.test"}},
	}
}

func isoFailCases() []isoCase {
	forbidden, allowed, meta := testenv.ForbiddenAddr.String(), testenv.AllowedAddr.String(), testenv.MetadataAddr.String()
	return []isoCase{
		{name: "direct-ip-tcp", cmd: "probe tcp " + forbidden + ":7", want: "fail", contains: []string{forbidden + ":7: connect:"}},
		{name: "direct-ip-http", cmd: isoNoProxy + "probe http http://" + forbidden + "/", want: "ok status=403", denied: forbidden + ":80", auditHost: forbidden},
		{name: "direct-ip-https", cmd: isoNoProxy + "probe http https://" + forbidden + "/" + isoCAFlag, want: "fail"},
		{name: "wrong-port-proxy", cmd: "probe http http://api.allowed.test:8080/", want: "ok status=403", denied: "api.allowed.test:8080", auditHost: "api.allowed.test"},
		{name: "wrong-port-connect", cmd: "probe http https://api.allowed.test:8443/" + isoCAFlag, want: "fail", denied: "api.allowed.test:8443"},
		{name: "wrong-port-direct", cmd: "probe tcp api.allowed.test:7", want: "fail", contains: []string{":7: connect:"}},
		{name: "unlisted-dns", cmd: "probe dns evil.test", want: "ok rcode=NXDOMAIN", denied: "evil.test", auditHost: "evil.test"},
		{name: "unlisted-connect", cmd: "probe http https://evil.test/" + isoCAFlag, want: "fail", denied: "evil.test:443"},
		{name: "unlisted-http-proxy", cmd: "probe http http://evil.test/", want: "ok status=403", denied: "evil.test:80"},
		{name: "unlisted-transparent", cmd: isoNoProxy + "probe http http://evil.test/", want: "fail", contains: []string{"no such host"}},
		{name: "dns-txt", cmd: "probe dns api.allowed.test --type TXT", want: "ok rcode=REFUSED", denied: "api.allowed.test", auditHost: "api.allowed.test"},
		{name: "dns-other-resolver-udp", cmd: "probe dns api.allowed.test --server " + allowed, want: "fail", contains: []string{allowed + ":53"}},
		{name: "dns-other-resolver-tcp", cmd: "probe dns api.allowed.test --tcp --server " + allowed, want: "fail", contains: []string{allowed + ":53"}},
		{name: "dns-fake-internet-link", cmd: "probe dns api.allowed.test --server 198.18.213.2", want: "fail", contains: []string{"198.18.213.2:53"}},
		{name: "dns-gateway-other-port", cmd: "probe dns api.allowed.test --server $G:5353", want: "fail", contains: []string{":5353"}},
		{name: "ipv6-link-local-gateway", cmd: "probe tcp6 '[fe80::1%eth0]:3128'", want: "fail", contains: []string{"dial tcp6 [fe80::1%eth0]:3128"}},
		{name: "ipv6-global", cmd: "probe tcp6 '[2001:db8::10]:80'", want: "fail", contains: []string{"dial tcp6 [2001:db8::10]:80"}},
		{name: "metadata-direct-tcp", cmd: "probe tcp " + meta + ":7", want: "fail", contains: []string{meta + ":7: connect:"}},
		{name: "metadata-direct-http", cmd: isoNoProxy + "probe http http://" + meta + "/latest/meta-data/", want: "ok status=403", denied: meta + ":80"},
		{name: "metadata-by-name-proxy", cmd: "probe http http://metadata.test/latest/meta-data/", want: "ok status=502", denied: "metadata.test:80", auditHost: "metadata.test"},
		{name: "metadata-by-name-transparent", cmd: isoNoProxy + "probe http http://metadata.test/latest/meta-data/", want: "ok status=502"},
		{name: "metadata-by-name-connect", cmd: "probe http https://metadata.test/" + isoCAFlag, want: "fail", denied: "metadata.test:443"},
		{name: "loopback-by-name", cmd: "probe http http://rebind-loopback.test/", want: "ok status=502", denied: "rebind-loopback.test:80"},
		{name: "raw-sockets", cmd: "probe raw", want: "fail", contains: []string{"packet=operation not permitted", "icmp=operation not permitted"}},
		{name: "ping-fake-internet", cmd: "probe ping " + allowed, want: "fail"},
		{name: "ping-gateway", cmd: "probe ping $G", want: "fail"},
		{name: "iptables", cmd: "probe iptables", want: "fail", contains: []string{"nftables="}},
		{name: "connect-ip-literal", cmd: "probe http https://" + allowed + "/" + isoCAFlag, want: "fail", denied: allowed + ":443", auditHost: allowed},
		{name: "host-header-spoof", cmd: isoNoProxy + "probe http http://" + allowed + "/ --host evil.test", want: "ok status=403", denied: "evil.test:80", auditHost: "evil.test"},
		{name: "transparent-host-wrong-port", cmd: isoNoProxy + "probe http http://api.allowed.test/ --host api.allowed.test:8080", want: "ok status=403", denied: "api.allowed.test:8080"},
		{name: "connect-gateway-itself", cmd: `probe http "https://$G:` + strconv.Itoa(netpolicy.ProxyPort) + `/"`, want: "fail", contains: []string{"Forbidden"}},
		// Go's proxy client puts the Host override into the absolute URI.
		{name: "proxy-host-override", cmd: "probe http http://api.allowed.test/ --host evil.test", want: "ok status=403", denied: "evil.test:80"},
		{name: "sni-spoof-gateway", cmd: isoNoProxy + `probe http "https://$G/" --sni evil.test` + isoCAFlag, want: "fail", denied: "evil.test:443"},
		{name: "sni-spoof-transparent", cmd: isoNoProxy + "probe http https://api.allowed.test/ --sni evil.test" + isoCAFlag, want: "fail", denied: "evil.test:443"},
		{name: "sni-spoof-connect", cmd: "probe http https://api.allowed.test/ --sni evil.test" + isoCAFlag, want: "fail", denied: "api.allowed.test:443"},
	}
}

// TestIsolationFromJob runs every probe in one real job container and
// checks each outcome, the gateway's summary and the audit trail, and that
// no listener of the host and no forbidden server of the fake internet saw
// anything.
func TestIsolationFromJob(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		t.Run("cold", func(t *testing.T) { testIsolationFromJob(t, "cold") })
		// The same suite in a sandbox the job claimed from the warm pool.
		t.Run("warm", func(t *testing.T) { testIsolationFromJob(t, "warm") })
		// And in a cold container in a namespace the pool plumbed ahead
		// ([pool] networks): made by Airlock (containerd) or held by a
		// holder (Docker).
		t.Run("pooled-network", func(t *testing.T) { testIsolationFromJob(t, "network") })
	})
}

// testIsolationFromJob runs the suite in a job that runs cold, claims a
// warm sandbox ("warm") or a pooled network ("network").
func testIsolationFromJob(t *testing.T, mode string) {
	env := isoOpen(t, isoEgress...)
	var warmPool *Pool
	switch mode {
	case "warm":
		warmPool = isoStartPool(t, env)
	case "network":
		warmPool = isoStartPoolWith(t, env, PoolConfig{Networks: 1}, poolNetworks)
	}

	// Listeners of the host the job must never reach: loopback, and every
	// host address (the job's own gateway address included) on one port.
	loopback := testenv.ListenHost(t, "127.0.0.1:0")
	anyAddr := testenv.ListenHost(t, "0.0.0.0:0")
	_, anyPort, err1 := net.SplitHostPort(anyAddr.AddrPort())
	_, loPort, err2 := net.SplitHostPort(loopback.AddrPort())
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	pool, err := env.cfg.Network.Prefix()
	if err != nil {
		t.Fatal(err)
	}
	hostCases := []isoCase{
		{name: "host-loopback", cmd: "probe tcp 127.0.0.1:" + loPort, want: "fail", contains: []string{"127.0.0.1:" + loPort + ": connect:"}},
		{name: "host-own-gateway-address", cmd: "probe tcp $G:" + anyPort, want: "fail", contains: []string{":" + anyPort + ": connect:"}},
	}
	for _, a := range isoHostAddrs(t, pool) {
		hostCases = append(hostCases, isoCase{name: "host-" + a.String(), cmd: "probe tcp " + a.String() + ":" + anyPort, want: "fail",
			contains: []string{a.String() + ":" + anyPort + ": connect:"}})
	}

	work, fail := isoWorkCases(), append(isoFailCases(), hostCases...)
	var probes []isoProbe
	for _, c := range append(append([]isoCase{}, work...), fail...) {
		probes = append(probes, isoProbe{name: c.name, cmd: c.cmd})
	}
	run := env.run(t, env.withCA(isoJob("iso-probe", isoEgress, probes)), nil)
	if warmPool != nil {
		st := warmPool.Stats()
		hits, misses := st.Hits, st.Misses
		if mode == "network" {
			hits, misses = st.NetHits, st.NetMisses
		}
		if hits != 1 || misses != 0 {
			t.Errorf("pool stats after the job: %+v, want 1 hit and no miss", st)
		}
	}
	if run.res.State != Success {
		t.Fatalf("probe job: state %s (%s), err %v; output:\n%s", run.res.State, run.res.Reason, run.res.Err, run.out)
	}
	if !run.gateway.IsValid() || !pool.Contains(run.gateway) {
		t.Fatalf("job's gateway %q (from resolv.conf) is not in the pool %s; output:\n%s", run.probes["addr"], pool, run.out)
	}
	if run.res.Egress == nil {
		t.Fatal("Result.Egress is nil for a job with a network")
	}
	t.Logf("%s", run.res.Egress)

	check := func(t *testing.T, c isoCase) {
		t.Helper()
		line := run.probe(t, c.name)
		t.Logf("%s", line)
		want := strings.ReplaceAll(c.want, "{G}", run.gateway.String())
		if !strings.HasPrefix(line, want) {
			t.Errorf("probe %s `%s` = %q, want %q...", c.name, c.cmd, line, want)
		}
		for _, s := range c.contains {
			if !strings.Contains(line, s) {
				t.Errorf("probe %s `%s` = %q, want it to contain %q", c.name, c.cmd, line, s)
			}
		}
		if c.denied != "" && !run.denied(c.denied) {
			t.Errorf("probe %s: the gateway's summary has no denial of %s: %s", c.name, c.denied, run.res.Egress)
		}
		if c.auditHost != "" && len(run.auditDenied(c.auditHost)) == 0 {
			t.Errorf("probe %s: the audit trail %s has no egress_denied/dns_refused record for %s", c.name, run.res.AuditTrail, c.auditHost)
		}
	}
	t.Run("works", func(t *testing.T) {
		for _, c := range work {
			t.Run(c.name, func(t *testing.T) { check(t, c) })
		}
	})
	t.Run("blocked", func(t *testing.T) {
		for _, c := range fail {
			t.Run(c.name, func(t *testing.T) { check(t, c) })
		}
	})
	t.Run("host listeners saw nothing", func(t *testing.T) {
		if n := loopback.Hits(); n != 0 {
			t.Errorf("listener on %s accepted %d connections from the job", loopback.AddrPort(), n)
		}
		if n := anyAddr.Hits(); n != 0 {
			t.Errorf("listener on %s accepted %d connections from the job", anyAddr.AddrPort(), n)
		}
	})
	t.Run("fake internet saw only allowed hosts", func(t *testing.T) {
		seen := 0
		for _, r := range env.fake.Requests() {
			if r.Host != "allowed" && r.Host != "wild" {
				t.Errorf("server %s (%s) got %s %s (SNI %q, Host %q)", r.Host, r.Addr, r.Method, r.URL, r.SNI, r.Header.Get("Host"))
			}
			if r.SNI == "evil.test" {
				t.Errorf("a TLS connection with SNI evil.test reached %s", r.Host)
			}
			seen++
		}
		if seen == 0 {
			t.Error("the fake internet saw no request at all")
		}
	})
	t.Run("audit trail has every gateway decision", func(t *testing.T) {
		var allowed, denied int
		for _, rec := range run.records {
			switch rec.Type {
			case audit.EgressAllowed, audit.DNSAnswered, audit.ProxiedRequest:
				allowed++
			case audit.EgressDenied, audit.DNSRefused:
				denied++
			}
		}
		if allowed != run.res.Egress.Allowed || denied != run.res.Egress.Denied {
			t.Errorf("audit trail has %d allowed and %d denied gateway records, the summary counts %d and %d",
				allowed, denied, run.res.Egress.Allowed, run.res.Egress.Denied)
		}
	})
	t.Run("audit trail records allowed egress", func(t *testing.T) {
		allowed := 0
		for _, rec := range run.records {
			if rec.Type == audit.EgressAllowed && rec.String(audit.FieldHost) == "api.allowed.test" {
				allowed++
			}
		}
		if allowed == 0 {
			t.Errorf("the audit trail %s has no egress_allowed record for api.allowed.test", run.res.AuditTrail)
		}
	})
}

// TestIsolationBetweenConcurrentJobs runs two jobs at once: A listens and
// waits, B probes A's gateway (proxy, DNS, transparent ports, a host
// listener on A's gateway address) and A's own address. None of it may
// connect; both jobs still reach what they declared.
func TestIsolationBetweenConcurrentJobs(t *testing.T) {
	isoEachExecutor(t, testIsolationBetweenConcurrentJobs)
}

func testIsolationBetweenConcurrentJobs(t *testing.T) {
	env := isoOpen(t, "api.allowed.test")
	egress := []string{"api.allowed.test"}
	goFile := filepath.Join(env.cfg.RuntimeDir, "jobs", env.runnerID+"-iso-a", runtimeSubdir, "go")

	jobA := isoJob("iso-a", egress, []isoProbe{
		{cmd: "nc -ll -p 8000 -e /bin/echo job-a-listener >/dev/null 2>&1 &"},
		{name: "self-listener", cmd: "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp $J:8000 && break; sleep 0.2; done"},
		{cmd: `echo "@@ ready"`},
		{cmd: "while [ ! -e /run/airlock/go ]; do sleep 0.1; done; P=$(cat /run/airlock/go)"},
		{name: "own-gateway-listener", cmd: "probe tcp $G:$P"},
		{name: "http-after", cmd: "probe http http://api.allowed.test/"},
	})
	outA := &isoOutput{}
	var (
		wg   sync.WaitGroup
		runA *isoRun
	)
	resA := make(chan *Result, 1)
	wg.Go(func() {
		res, err := env.r.Run(context.Background(), jobA, RunOptions{Out: outA, AwaitAudit: true})
		if err != nil {
			t.Errorf("Run(iso-a) teardown error = %v", err)
		}
		resA <- res
	})
	release := func() {
		if err := os.WriteFile(goFile+".tmp", []byte("0\n"), 0o444); err == nil {
			_ = os.Rename(goFile+".tmp", goFile)
		}
	}
	// Whatever happens, job A is released and waited for.
	t.Cleanup(func() { release(); wg.Wait() })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr, err := outA.await(ctx, "@@ addr ")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := outA.await(ctx, "@@ ready"); err != nil {
		t.Fatal(err)
	}
	gs, js, _ := strings.Cut(addr, " ")
	gwA, err1 := netip.ParseAddr(gs)
	jobIPA, err2 := netip.ParseAddr(js)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("job A's addresses %q: %v", addr, err)
	}
	netnsA := isoContainerNetNS(t, env.cfg, env.runnerID, "iso-a")
	// The leftover check run at cleanup sees a running job's resources (it
	// is not vacuous).
	running := strings.Join(isoLeftovers(t, env.runnerID, env.cfg), "\n")
	for _, want := range []string{"ip: ", "container ", "pool entry ", "runtime directory "} {
		if !strings.Contains(running, want) {
			t.Errorf("while job A runs, the leftover check finds no %q; it finds:\n%s", want, running)
		}
	}
	// The host rules: with the iptables backend in both families, with
	// native nftables in one inet table.
	if !(strings.Contains(running, "iptables-save: ") && strings.Contains(running, "ip6tables-save: ")) && !strings.Contains(running, "nft: ") {
		t.Errorf("while job A runs, the leftover check finds no firewall rules of the job; it finds:\n%s", running)
	}
	// A listener of the host on A's gateway address, on a port that is not
	// a gateway port: neither job may reach it.
	gwListener := testenv.ListenHost(t, netip.AddrPortFrom(gwA, 0).String())
	_, gwPort, err := net.SplitHostPort(gwListener.AddrPort())
	if err != nil {
		t.Fatal(err)
	}

	a := func(port int) string { return netip.AddrPortFrom(gwA, uint16(port)).String() }
	proxyA := "http://" + a(netpolicy.ProxyPort)
	cases := []isoCase{
		{name: "a-proxy", cmd: "env HTTP_PROXY=" + proxyA + " http_proxy=" + proxyA + " probe http http://api.allowed.test/", want: "fail"},
		{name: "a-proxy-tcp", cmd: "probe tcp " + a(netpolicy.ProxyPort), want: "fail"},
		{name: "a-dns-udp", cmd: "probe dns api.allowed.test --server " + gwA.String(), want: "fail"},
		{name: "a-dns-tcp", cmd: "probe dns api.allowed.test --tcp --server " + gwA.String(), want: "fail"},
		{name: "a-transparent-http", cmd: "probe tcp " + a(netpolicy.TransparentHTTPPort), want: "fail"},
		{name: "a-transparent-tls", cmd: "probe tcp " + a(netpolicy.TransparentTLSPort), want: "fail"},
		{name: "a-gateway-listener", cmd: "probe tcp " + gwA.String() + ":" + gwPort, want: "fail"},
		{name: "a-job-listener", cmd: "probe tcp " + jobIPA.String() + ":8000", want: "fail"},
		{name: "a-job-ping", cmd: "probe ping " + jobIPA.String(), want: "fail"},
		{name: "own-http", cmd: "probe http http://api.allowed.test/", want: "ok status=200", contains: []string{"host=allowed"}},
	}
	var probes []isoProbe
	for _, c := range cases {
		probes = append(probes, isoProbe{name: c.name, cmd: c.cmd})
	}
	runB := env.run(t, isoJob("iso-b", egress, probes), nil)

	// B is done: release A, which then probes its gateway's host listener.
	if err := os.WriteFile(goFile+".tmp", []byte(gwPort+"\n"), 0o444); err != nil {
		t.Fatalf("releasing job A: %v", err)
	}
	if err := os.Rename(goFile+".tmp", goFile); err != nil {
		t.Fatalf("releasing job A: %v", err)
	}
	runA = isoParse(t, <-resA, outA.String())
	wg.Wait()

	for _, run := range []*isoRun{runA, runB} {
		if run.res.State != Success {
			t.Fatalf("job: state %s (%s), err %v; output:\n%s", run.res.State, run.res.Reason, run.res.Err, run.out)
		}
	}
	if runB.gateway == gwA || runB.jobIP == jobIPA {
		t.Fatalf("jobs share addresses: A %s/%s, B %s/%s", gwA, jobIPA, runB.gateway, runB.jobIP)
	}
	for _, c := range cases {
		t.Run("B/"+c.name, func(t *testing.T) {
			line := runB.probe(t, c.name)
			if !strings.HasPrefix(line, c.want) {
				t.Errorf("probe %s `%s` = %q, want %q...", c.name, c.cmd, line, c.want)
			}
			for _, s := range c.contains {
				if !strings.Contains(line, s) {
					t.Errorf("probe %s = %q, want it to contain %q", c.name, line, s)
				}
			}
		})
	}
	for _, c := range []isoCase{
		{name: "self-listener", want: "ok connected job-a-listener"},
		{name: "own-gateway-listener", want: "fail"},
		{name: "http-after", want: "ok status=200", contains: []string{"host=allowed"}},
	} {
		t.Run("A/"+c.name, func(t *testing.T) {
			line := runA.probe(t, c.name)
			if !strings.HasPrefix(line, c.want) {
				t.Errorf("probe %s = %q, want %q...", c.name, line, c.want)
			}
			for _, s := range c.contains {
				if !strings.Contains(line, s) {
					t.Errorf("probe %s = %q, want it to contain %q", c.name, line, s)
				}
			}
		})
	}
	if n := gwListener.Hits(); n != 0 {
		t.Errorf("host listener on job A's gateway address %s accepted %d connections", gwListener.AddrPort(), n)
	}
	if runA.denied(runB.jobIP.String()) {
		t.Errorf("job B's packets reached job A's gateway: %s", runA.res.Egress)
	}
	if held := isoNetNSHolders(t, env.runnerID, netnsA); len(held) > 0 {
		t.Errorf("job A's network namespace net:[%d] still exists after the job:\n%s", netnsA, strings.Join(held, "\n"))
	}
}

// TestIsolationCeilingRefusesJob: a job declaring a host outside the
// ceiling is refused before anything of it runs.
func TestIsolationCeilingRefusesJob(t *testing.T) { isoEachExecutor(t, testIsolationCeilingRefusesJob) }

func testIsolationCeilingRefusesJob(t *testing.T) {
	env := isoOpen(t, "api.allowed.test", "*.wild.test:443")
	// A repository policy (`airlock policy set`) replaces the default
	// ceiling for its repositories.
	store, err := secrets.Open(env.cfg.StateDir, secrets.OpenOptions{Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	err = store.SetPolicy(secrets.EgressPolicy{RepoPattern: "isolation/strict", Egress: []string{"build.wild.test:443"}})
	if err := errors.Join(err, store.Close()); err != nil {
		t.Fatalf("setting a repository policy: %v", err)
	}
	tests := []struct {
		name     string
		repo     string
		egress   []string
		wantErr  []string
		refused  bool
		wantRuns bool
	}{
		{name: "host outside the ceiling", egress: []string{"api.allowed.test", "evil.test:443"}, refused: true,
			wantErr: []string{`"evil.test:443"`, "api.allowed.test", "*.wild.test:443", strconv.Quote(isoRepo), env.cfg.Path()}},
		{name: "port outside the ceiling", egress: []string{"build.wild.test:80"}, refused: true,
			wantErr: []string{`"build.wild.test:80"`, "*.wild.test:443"}},
		{name: "CIDR entry from a job", egress: []string{"203.0.113.0/24:443"}, refused: true,
			wantErr: []string{"203.0.113.0/24:443", "admin"}},
		{name: "within the ceiling", egress: []string{"api.allowed.test:443", "build.wild.test:443"}, wantRuns: true},
		{name: "outside the repository's policy", repo: "isolation/strict", egress: []string{"api.allowed.test"}, refused: true,
			wantErr: []string{`"api.allowed.test"`, "isolation/strict", "build.wild.test:443"}},
		{name: "within the repository's policy", repo: "isolation/strict", egress: []string{"build.wild.test:443"}, wantRuns: true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := isoJob(fmt.Sprintf("iso-ceiling-%d", i), tc.egress, []isoProbe{{name: "ran", cmd: "echo yes"}})
			if tc.repo != "" {
				j.Repo = tc.repo
			}
			run := env.run(t, j, nil)
			_, ran := run.probes["ran"]
			if ran != tc.wantRuns {
				t.Errorf("job ran = %v, want %v; output:\n%s", ran, tc.wantRuns, run.out)
			}
			if !tc.refused {
				if run.res.State != Success {
					t.Errorf("state %s (%s), err %v, want success", run.res.State, run.res.Reason, run.res.Err)
				}
				return
			}
			if run.res.State != Failed || run.res.Reason != Unauthorized {
				t.Errorf("state %s, reason %q, want failed, %q", run.res.State, run.res.Reason, Unauthorized)
			}
			var denied *DeniedError
			if !errors.As(run.res.Err, &denied) {
				t.Fatalf("Result.Err = %v, want a *DeniedError", run.res.Err)
			}
			t.Logf("Result.Err = %v", run.res.Err)
			for _, s := range tc.wantErr {
				if !strings.Contains(run.res.Err.Error(), s) {
					t.Errorf("Result.Err = %q, want it to name %s", run.res.Err, s)
				}
			}
			if len(run.res.Steps) != 0 {
				t.Errorf("steps ran for a refused job: %+v", run.res.Steps)
			}
			if run.res.Egress != nil {
				t.Errorf("a refused job got a network: %s", run.res.Egress)
			}
		})
	}
}
