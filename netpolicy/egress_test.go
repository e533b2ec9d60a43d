package netpolicy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEgressSource: with an egress source set, every upstream connection
// of the gateway (plain proxying and CONNECT) leaves from that address.
func TestEgressSource(t *testing.T) {
	tn := newTestNet()
	src := netip.AddrFrom4([4]byte{127, 77, tn.gateway.As4()[2], 5})
	seen := make(chan string, 4)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		seen <- host
	}))
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(tn.up1, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	gw, err := NewGateway(GatewayConfig{Resolver: StaticResolver{"api.allowed.test": {tn.up1}}, Ports: &Ports{},
		EgressSource: src, DialTimeout: 5 * time.Second, PeekTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	reg, err := gw.Register(context.Background(), JobConfig{JobID: "job-e", GatewayIP: tn.gateway, JobIP: tn.job,
		Policy: &Policy{Allow: mustEntries(t, "api.allowed.test:"+strconv.Itoa(port), cidrFor(tn.up1, port))}})
	if err != nil {
		t.Fatal(err)
	}
	g := &testGateway{net: tn, gw: gw, reg: reg, events: &eventLog{}}
	resp, err := g.proxyClient(nil).Get("http://api.allowed.test:" + strconv.Itoa(port) + "/")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if got := <-seen; got != src.String() {
		t.Errorf("proxied request came from %s, want the egress source %s", got, src)
	}
	c, status := g.connect(t, "api.allowed.test:"+strconv.Itoa(port))
	if status != 200 {
		t.Fatalf("CONNECT = %d", status)
	}
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: api.allowed.test:" + strconv.Itoa(port) + "\r\n\r\n"))
	select {
	case got := <-seen:
		if got != src.String() {
			t.Errorf("tunnelled request came from %s, want %s", got, src)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no tunnelled request")
	}
}

func TestResolveEgressSource(t *testing.T) {
	if a, err := ResolveEgressSource("lo"); err != nil || a != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("ResolveEgressSource(lo) = %v, %v; want 127.0.0.1", a, err)
	}
	if a, err := ResolveEgressSource("127.0.0.1"); err != nil || !a.IsLoopback() {
		t.Errorf("ResolveEgressSource(127.0.0.1) = %v, %v", a, err)
	}
	if _, err := ResolveEgressSource("192.0.2.77"); err == nil || !strings.Contains(err.Error(), "not an address of this host") {
		t.Errorf("an address not on the host: %v", err)
	}
	if a, err := ResolveEgressSource(""); err != nil || a.IsValid() {
		t.Errorf("empty: %v, %v", a, err)
	}
}
