package netpolicy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/airlock-ci/airlock/audit"
)

const bulkSize = 256 << 20

// startBulkServer serves bulkSize bytes to every connection once the client
// has sent one byte.
func startBulkServer(b *testing.B, addr netip.Addr) int {
	b.Helper()
	buf := make([]byte, 1<<20)
	return int(serveTCP(b, addr, func(c net.Conn) {
		one := make([]byte, 1)
		if _, err := io.ReadFull(c, one); err != nil {
			return
		}
		for n := 0; n < bulkSize; n += len(buf) {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}).Port())
}

// startRelay is a minimal TCP relay on addr:any to target (io.Copy both
// ways between *net.TCPConn, i.e. splice(2)), the baseline for the gateway.
func startRelay(b *testing.B, addr netip.Addr, target string) string {
	b.Helper()
	return serveTCP(b, addr, func(c net.Conn) {
		u, err := net.Dial("tcp4", target)
		if err != nil {
			return
		}
		defer u.Close()
		go func() {
			_, _ = io.Copy(u, c)
			_ = u.(*net.TCPConn).CloseWrite()
		}()
		_, _ = io.Copy(c, u)
	}).String()
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fetchBulk(b *testing.B, c net.Conn) time.Duration {
	b.Helper()
	defer c.Close()
	start := time.Now()
	// Not an upper-case letter: one could start an HTTP request line,
	// which a plaintext tunnel waits (up to its peek timeout) to see.
	if _, err := c.Write([]byte{'g'}); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var n int
	var err error
	for {
		var m int
		m, err = c.Read(buf)
		n += m
		if err != nil {
			break
		}
	}
	if err != io.EOF || n != bulkSize {
		b.Fatalf("received %d bytes (%v), want %d", n, err, bulkSize)
	}
	return time.Since(start)
}

// BenchmarkConnectThroughput moves 256 MiB through a CONNECT tunnel and the
// same transfer directly, in the same run, and reports both rates and the
// ratio (target >= 0.9).
func BenchmarkConnectThroughput(b *testing.B) {
	tn := newTestNet()
	port := startBulkServer(b, tn.up1)
	p := &Policy{Allow: mustEntries(b, "bulk.test:"+strconv.Itoa(port), cidrFor(tn.up1, port))}
	g := newTestGateway(b, tn, p, gatewayOpts{resolver: StaticResolver{"bulk.test": {tn.up1}}})
	target := netip.AddrPortFrom(tn.up1, uint16(port)).String()
	relay := startRelay(b, tn.up2, target)
	var direct, proxied, relayed, directCPU, proxiedCPU time.Duration
	for b.Loop() {
		rc, err := dialer(tn.job).Dial("tcp4", relay)
		if err != nil {
			b.Fatal(err)
		}
		relayed += fetchBulk(b, rc)
		c, err := dialer(tn.job).Dial("tcp4", target)
		if err != nil {
			b.Fatal(err)
		}
		cpu := cpuTime(b)
		direct += fetchBulk(b, c)
		directCPU += cpuTime(b) - cpu
		pc, status := g.connect(b, "bulk.test:"+strconv.Itoa(port))
		if status != 200 {
			b.Fatalf("CONNECT = %d", status)
		}
		cpu = cpuTime(b)
		proxied += fetchBulk(b, pc)
		proxiedCPU += cpuTime(b) - cpu
	}
	mb := float64(bulkSize) / (1 << 20) * float64(b.N)
	b.ReportMetric(mb/direct.Seconds(), "direct-MiB/s")
	b.ReportMetric(mb/proxied.Seconds(), "connect-MiB/s")
	b.ReportMetric(direct.Seconds()/proxied.Seconds(), "ratio")
	// A bare splice relay (no policy, no gateway) bounds what any
	// userspace TCP proxy can reach on this machine.
	b.ReportMetric(mb/relayed.Seconds(), "bare-relay-MiB/s")
	b.ReportMetric(relayed.Seconds()/proxied.Seconds(), "vs-bare-relay")
	// CPU (user+system, all three parties are in this process) per GiB:
	// on a CPU-bound loopback run the ratio follows the CPU cost.
	gib := mb / 1024
	b.ReportMetric(directCPU.Seconds()*1000/gib, "direct-cpu-ms/GiB")
	b.ReportMetric(proxiedCPU.Seconds()*1000/gib, "connect-cpu-ms/GiB")
}

// BenchmarkRequestLatency measures a small GET directly and through the
// gateway (explicit proxy for http, CONNECT tunnel for https), keep-alive.
func BenchmarkRequestLatency(b *testing.B) {
	tn := newTestNet()
	fake := newFakeCA(b)
	plain := startUpstream(b, tn.up1, 0, nil, "plain.test")
	secure := startUpstream(b, tn.up1, 0, fake, "secure.test")
	p := &Policy{Allow: mustEntries(b, "plain.test:"+strconv.Itoa(plain.port), "secure.test:"+strconv.Itoa(secure.port),
		cidrFor(tn.up1, plain.port), cidrFor(tn.up1, secure.port))}
	g := newTestGateway(b, tn, p, gatewayOpts{resolver: StaticResolver{"*.test": {tn.up1}}})
	direct := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			return dialer(tn.job).DialContext(ctx, network, net.JoinHostPort(tn.up1.String(), port))
		},
		TLSClientConfig: &tls.Config{RootCAs: fake.pool},
	}}
	proxied := g.proxyClient(fake.pool)
	for _, tc := range []struct {
		name   string
		client *http.Client
		url    string
	}{
		{"direct-http", direct, fmt.Sprintf("http://plain.test:%d/", plain.port)},
		{"proxy-http", proxied, fmt.Sprintf("http://plain.test:%d/", plain.port)},
		{"direct-https", direct, fmt.Sprintf("https://secure.test:%d/", secure.port)},
		{"connect-https", proxied, fmt.Sprintf("https://secure.test:%d/", secure.port)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := tc.client.Get(tc.url)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, resp.Body); err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("GET %s = %d", tc.url, resp.StatusCode)
				}
			}
		})
	}
}

// BenchmarkRecordedDNS measures gateway decisions per second recorded in a
// real fsynced trail: one job sends DNS questions (refused) over UDP as
// fast as the gateway answers them, and every decision reaches its trail
// through the job's queue (group commit). Reports events/s and the share
// that had to be dropped (0 expected).
func BenchmarkRecordedDNS(b *testing.B) {
	key, err := audit.LoadOrCreateKey(filepath.Join(b.TempDir(), "audit.key"))
	if err != nil {
		b.Fatal(err)
	}
	tn := newTestNet()
	sink := &trailSink{trails: map[string]*audit.Trail{}}
	tr, err := audit.Open(b.TempDir(), "r1", "bench", key)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	sink.trails["bench"] = tr
	gw, err := NewGateway(GatewayConfig{Resolver: StaticResolver{}, Events: sink, Ports: &Ports{}})
	if err != nil {
		b.Fatal(err)
	}
	defer gw.Close()
	reg, err := gw.Register(context.Background(), JobConfig{JobID: "bench", GatewayIP: tn.gateway, JobIP: tn.job, Policy: &Policy{}})
	if err != nil {
		b.Fatal(err)
	}
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second,
		Dialer: &net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(tn.job, 0))}}
	conn, err := c.Dial(reg.Addrs().DNS.String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion("q.bench.test.", dns.TypeA)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, _, err := c.ExchangeWithConn(m, conn); err != nil {
			b.Fatal(err)
		}
	}
	if err := reg.Close(); err != nil { // flushes the queue into the trail
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(float64(reg.Summary().Dropped)/float64(b.N), "dropped/event")
}
