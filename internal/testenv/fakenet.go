package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Addresses of the fake internet. They are TEST-NET addresses (RFC 5737)
// plus the cloud metadata address; while a FakeInternet exists the host
// routes them into its namespace.
var (
	AllowedAddr   = netip.MustParseAddr("203.0.113.10")
	ForbiddenAddr = netip.MustParseAddr("203.0.113.20")
	WildAddr      = netip.MustParseAddr("198.51.100.30")
	OtherAddr     = netip.MustParseAddr("198.51.100.40")
	MetadataAddr  = netip.MustParseAddr("169.254.169.254")
	// MTLSAddr's HTTPS server completes the handshake only for a client
	// certificate of the fake internet's CA (TestCA.ClientCertPEM).
	MTLSAddr = netip.MustParseAddr("203.0.113.30")
)

// Ports of the fake internet's servers (on every address).
const (
	FakeHTTPPort  = 80
	FakeHTTPSPort = 443
	FakeEchoPort  = 7
)

// fakeRoutes are routed from the host into the fake internet.
var fakeRoutes = []netip.Prefix{
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("169.254.169.254/32"),
}

// The link between the host and the fake internet (RFC 2544 benchmarking
// range, unused on the test machines).
var (
	fakeLinkHost = netip.MustParsePrefix("198.18.213.1/30")
	fakeLinkNS   = netip.MustParsePrefix("198.18.213.2/30")
)

// hostNames maps each fake address to the name its servers answer with.
var hostNames = map[netip.Addr]string{
	AllowedAddr:   "allowed",
	ForbiddenAddr: "forbidden",
	WildAddr:      "wild",
	OtherAddr:     "other",
	MetadataAddr:  "metadata",
	MTLSAddr:      "mtls",
}

// FakeHosts is the static resolver map of the fake internet. A key
// "*.zone" matches any name below zone. Some names deliberately resolve to
// addresses a gateway must never dial (metadata, loopback).
var FakeHosts = map[string]netip.Addr{
	"api.allowed.test":     AllowedAddr,
	"allowed.test":         AllowedAddr,
	"evil.test":            ForbiddenAddr,
	"forbidden.test":       ForbiddenAddr,
	"*.wild.test":          WildAddr,
	"other.test":           OtherAddr,
	"metadata.test":        MetadataAddr,
	"mtls.test":            MTLSAddr,
	"rebind-loopback.test": netip.MustParseAddr("127.0.0.1"),
}

// LookupFake resolves name with FakeHosts (exact names first, then the
// closest wildcard). It never consults a real resolver.
func LookupFake(name string) (netip.Addr, bool) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if a, ok := FakeHosts[name]; ok {
		return a, true
	}
	for rest := name; ; {
		_, after, ok := strings.Cut(rest, ".")
		if !ok {
			return netip.Addr{}, false
		}
		if a, ok := FakeHosts["*."+after]; ok {
			return a, true
		}
		rest = after
	}
}

// FakeRequest is one request an HTTP(S) server of the fake internet saw.
type FakeRequest struct {
	Host   string // server name of the address that answered
	Addr   netip.Addr
	TLS    bool
	SNI    string
	Method string
	URL    string
	Header http.Header
	Body   string // the first 64 KiB
	// ClientCert is the common name of the client certificate (mTLS).
	ClientCert string
}

// FakeInternet is a network namespace with servers on the fake addresses,
// reachable from the host through a veth and host routes. Only one exists
// on the host at a time (a host-wide lock serialises tests of all
// processes), because the routes are host-wide.
type FakeInternet struct {
	// NetNS is the namespace's path.
	NetNS string
	// HostIf is the host end of the link.
	HostIf string
	// CA is the test CA that signed the HTTPS servers' certificate.
	CA *TestCA

	mu       sync.Mutex
	requests []FakeRequest
}

// Requests returns the HTTP(S) requests seen so far.
func (f *FakeInternet) Requests() []FakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FakeRequest(nil), f.requests...)
}

// NewFakeInternet builds the fake internet and removes it in t.Cleanup,
// asserting that no link, route or namespace is left.
func NewFakeInternet(t testing.TB) *FakeInternet {
	t.Helper()
	RequireRoot(t)
	unlock := lockFakeNet(t)
	cleanStaleFakeNets(t)

	ca, err := NewTestCA(fakeCertNames())
	if err != nil {
		unlock()
		t.Fatalf("creating test CA: %v", err)
	}
	f := &FakeInternet{HostIf: fmt.Sprintf("fnet%x", os.Getpid()), CA: ca}
	t.Cleanup(unlock) // runs last
	f.NetNS = NewNetNS(t, "airlock-fakenet")
	t.Cleanup(func() { f.checkGone(t) })
	t.Cleanup(func() {
		if err := deleteLinkByName(f.HostIf); err != nil {
			t.Errorf("deleting fake internet link: %v", err)
		}
	})
	if err := f.plumb(); err != nil {
		t.Fatalf("plumbing fake internet: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	if err := f.serve(ctx, &wg); err != nil {
		t.Fatalf("starting fake internet servers: %v", err)
	}
	return f
}

func fakeCertNames() []string {
	names := make([]string, 0, len(FakeHosts)+len(hostNames))
	for n := range FakeHosts {
		names = append(names, n)
	}
	for a := range hostNames {
		names = append(names, a.String())
	}
	return names
}

// plumb creates the veth, addresses and routes.
func (f *FakeInternet) plumb() error {
	target, err := netns.GetFromPath(f.NetNS)
	if err != nil {
		return err
	}
	defer target.Close()
	la := netlink.NewLinkAttrs()
	la.Name = f.HostIf
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(target))}); err != nil {
		return fmt.Errorf("creating veth: %w", err)
	}
	host, err := netlink.LinkByName(f.HostIf)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: prefixNet(fakeLinkHost)}); err != nil {
		return fmt.Errorf("adding host address: %w", err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	for a := range hostNames {
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a, 32))}); err != nil {
			return fmt.Errorf("adding %s: %w", a, err)
		}
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: prefixNet(fakeLinkNS)}); err != nil {
		return fmt.Errorf("adding namespace address: %w", err)
	}
	for _, l := range []netlink.Link{lo, eth} {
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: fakeLinkHost.Addr().AsSlice()}); err != nil {
		return fmt.Errorf("adding namespace default route: %w", err)
	}
	for _, p := range fakeRoutes {
		r := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: prefixNet(p), Gw: fakeLinkNS.Addr().AsSlice()}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("adding host route to %s: %w", p, err)
		}
	}
	return nil
}

// checkGone asserts that the link and the host routes are gone.
func (f *FakeInternet) checkGone(t testing.TB) {
	t.Helper()
	if _, err := netlink.LinkByName(f.HostIf); err == nil {
		t.Errorf("fake internet link %s still exists after cleanup", f.HostIf)
	}
	for _, p := range fakeRoutes {
		routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: prefixNet(p)}, netlink.RT_FILTER_DST)
		if err != nil {
			t.Errorf("listing routes to %s: %v", p, err)
			continue
		}
		if len(routes) > 0 {
			t.Errorf("host route to %s still exists after cleanup: %v", p, routes)
		}
	}
}

// serve opens the listeners inside the namespace and serves them until ctx
// ends.
func (f *FakeInternet) serve(ctx context.Context, wg *sync.WaitGroup) error {
	var lns []net.Listener
	err := InNetNS(f.NetNS, func() error {
		for _, p := range []int{FakeHTTPPort, FakeHTTPSPort, FakeEchoPort} {
			ln, err := net.Listen("tcp4", ":"+strconv.Itoa(p))
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return err
	}
	httpSrv := &http.Server{Handler: http.HandlerFunc(f.handle), ReadHeaderTimeout: 5 * time.Second}
	tlsCfg := f.CA.ServerConfig()
	mtlsCfg := f.CA.ServerConfig()
	mtlsCfg.ClientAuth, mtlsCfg.ClientCAs = tls.RequireAndVerifyClientCert, f.CA.Pool
	tlsCfg.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		if addrOf(hi.Conn.LocalAddr()) == MTLSAddr {
			return mtlsCfg, nil
		}
		return nil, nil
	}
	httpsSrv := &http.Server{Handler: http.HandlerFunc(f.handle), ReadHeaderTimeout: 5 * time.Second, TLSConfig: tlsCfg}
	wg.Go(func() { _ = httpSrv.Serve(lns[0]) })
	wg.Go(func() { _ = httpsSrv.ServeTLS(lns[1], "", "") })
	wg.Go(func() { serveEcho(lns[2]) })
	wg.Go(func() {
		<-ctx.Done()
		_ = httpSrv.Close()
		_ = httpsSrv.Close()
		_ = lns[2].Close()
	})
	return nil
}

func (f *FakeInternet) handle(w http.ResponseWriter, r *http.Request) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	addr := addrOf(local)
	req := FakeRequest{Host: hostNames[addr], Addr: addr, TLS: r.TLS != nil, Method: r.Method, URL: r.URL.String(), Header: r.Header.Clone()}
	if body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10)); err == nil {
		req.Body = string(body)
	}
	if r.TLS != nil {
		req.SNI = r.TLS.ServerName
		if len(r.TLS.PeerCertificates) > 0 {
			req.ClientCert = r.TLS.PeerCertificates[0].Subject.CommonName
		}
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.mu.Unlock()
	w.Header().Set("X-Fakenet-Host", req.Host)
	fmt.Fprintf(w, "fakenet host=%s addr=%s tls=%t sni=%s hosthdr=%s path=%s\n", req.Host, addr, req.TLS, req.SNI, r.Host, r.URL.Path)
}

// serveEcho greets with the answering host's name, then echoes lines.
func serveEcho(ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			addr := addrOf(c.LocalAddr())
			fmt.Fprintf(c, "fakenet host=%s addr=%s\n", hostNames[addr], addr)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintf(c, "%s\n", sc.Text())
			}
		})
	}
}

func addrOf(a net.Addr) netip.Addr {
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func deleteLinkByName(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}

// lockFakeNet takes the host-wide fake internet lock, waiting up to five
// minutes for other test processes.
func lockFakeNet(t testing.TB) (unlock func()) {
	t.Helper()
	const dir = "/run/airlock-test"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("creating %s: %v", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "fakenet.lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatalf("opening fake internet lock: %v", err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			t.Fatalf("locking fake internet: %v", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			t.Fatalf("fake internet is busy for 5 minutes (another test holds %s)", f.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanStaleFakeNets removes the links and namespaces of fake internets
// whose test process died (called with the lock held).
func cleanStaleFakeNets(t testing.TB) {
	t.Helper()
	links, err := netlink.LinkList()
	for i := 0; errors.Is(err, netlink.ErrDumpInterrupted) && i < 5; i++ {
		links, err = netlink.LinkList() // interrupted by a concurrent change: ask again
	}
	if err != nil {
		t.Fatalf("listing links: %v", err)
	}
	for _, l := range links {
		hexPID, ok := strings.CutPrefix(l.Attrs().Name, "fnet")
		if !ok {
			continue
		}
		pid, err := strconv.ParseInt(hexPID, 16, 32)
		if err != nil || pid == int64(os.Getpid()) {
			continue
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(int(pid))); err == nil {
			continue
		}
		t.Logf("removing stale fake internet link %s", l.Attrs().Name)
		if err := netlink.LinkDel(l); err != nil {
			t.Fatalf("removing stale fake internet link %s: %v", l.Attrs().Name, err)
		}
	}
	paths, _ := filepath.Glob("/var/run/netns/airlock-fakenet-*")
	for _, p := range paths {
		name := filepath.Base(p)
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(name, "airlock-fakenet-"), "-")
		if _, err := os.Stat("/proc/" + pidStr); err == nil || pidStr == "" {
			continue
		}
		t.Logf("removing stale fake internet namespace %s", name)
		if err := netns.DeleteNamed(name); err != nil {
			t.Fatalf("removing stale fake internet namespace %s: %v", name, err)
		}
	}
}
