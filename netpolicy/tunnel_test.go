package netpolicy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestConnectPlainHTTPHostSwitch: a CONNECT tunnel to an allowed plain-HTTP
// host is not a fronting channel. The first keep-alive request (Host: the
// tunnel's host) is served; the next one on the same connection asks for
// another virtual host and is refused with a 403 naming the rule, the
// upstream never sees it, and the trail records both.
func TestConnectPlainHTTPHostSwitch(t *testing.T) {
	e := newProxyEnv(t, false)
	pp := strconv.Itoa(e.plainUp.port)
	target := "plain.allowed.test:" + pp
	c, status := e.connect(t, target)
	if status != 200 {
		t.Fatalf("CONNECT %s = %d, want 200", target, status)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "GET /first HTTP/1.1\r\nHost: %s\r\n\r\n", target)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("first request in the tunnel: %v", err)
	}
	if body := readBody(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "hello from plain.allowed.test") {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	fmt.Fprintf(c, "GET /second HTTP/1.1\r\nHost: forbidden.test\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("second request in the tunnel: %v (want a 403)", err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, `"forbidden.test"`) || !strings.Contains(body, "CONNECT tunnel") {
		t.Errorf("fronting request: %d %q, want 403 naming the rule", resp.StatusCode, body)
	}
	if n, _ := io.Copy(io.Discard, br); n != 0 {
		t.Errorf("%d bytes after the refusal, want the tunnel closed", n)
	}
	for _, r := range e.plainUp.requests() {
		if r.Host != target || r.Path != "/first" {
			t.Errorf("upstream saw %s %s: a request for another host got through the tunnel", r.Host, r.Path)
		}
	}
	e.events.wait(t, "allowed request in tunnel", func(ev Event) bool {
		return ev.Kind == KindHTTP && ev.Verdict == VerdictAllowed && ev.Path == "/first" && ev.Host == "plain.allowed.test"
	})
	e.events.wait(t, "refused request in tunnel", func(ev Event) bool {
		return ev.Kind == KindHTTP && ev.Verdict == VerdictDenied && ev.Host == "forbidden.test" && ev.Path == "/second"
	})

	// A non-HTTP plaintext protocol still passes unchanged (the upstream
	// answers 400 to it: it reached the server as it was sent).
	c2, status := e.connect(t, target)
	if status != 200 {
		t.Fatalf("second CONNECT = %d", status)
	}
	_ = c2.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c2, "HELLO there\r\n\r\n")
	got, _ := io.ReadAll(c2)
	if !strings.HasPrefix(string(got), "HTTP/1.1 400") {
		t.Errorf("non-HTTP bytes through the tunnel: upstream answered %q, want its 400", got)
	}
}

// A plaintext tunnel's Host check cannot be dodged by timing or padding:
// a first line that could still be an HTTP request line when the peek
// timeout passes, or that runs past maxRequestLine, is refused with
// nothing sent upstream (it used to be relayed unread), and a request
// line with something after its version is read as HTTP, not relayed.
func TestConnectPlainHTTPCheckCannotBeDodged(t *testing.T) {
	e := newProxyEnvPeek(t, false, 300*time.Millisecond)
	target := "plain.allowed.test:" + strconv.Itoa(e.plainUp.port)
	fronting := "Host: forbidden.test\r\n\r\n"
	for _, tc := range []struct {
		name   string
		send   func(c net.Conn)
		reason string // in the CONNECT event's denial; "" for a 403 of the Host check
	}{
		{"pause inside the method", func(c net.Conn) {
			fmt.Fprint(c, "G")
			time.Sleep(600 * time.Millisecond)
			fmt.Fprint(c, "ET /pause HTTP/1.1\r\n"+fronting)
		}, "could still be an HTTP request line after 300ms"},
		{"pause inside the target", func(c net.Conn) {
			fmt.Fprint(c, "GET /pau")
			time.Sleep(600 * time.Millisecond)
			fmt.Fprint(c, "se HTTP/1.1\r\n"+fronting)
		}, "could still be an HTTP request line"},
		{"padded target", func(c net.Conn) {
			fmt.Fprint(c, "GET /"+strings.Repeat("a", maxRequestLine)+" HTTP/1.1\r\n"+fronting)
		}, "longer than 8192 bytes"},
		{"space after the version", func(c net.Conn) {
			fmt.Fprint(c, "GET /space HTTP/1.1 \r\n"+fronting)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.plainUp.requests())
			c, status := e.connect(t, target)
			if status != 200 {
				t.Fatalf("CONNECT %s = %d, want 200", target, status)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			tc.send(c)
			got, _ := io.ReadAll(c)
			if tc.reason != "" && (!strings.HasPrefix(string(got), "HTTP/1.1 403") || !strings.Contains(string(got), tc.reason)) {
				t.Errorf("the client read %.200q, want a 403 naming %q", got, tc.reason)
			}
			if strings.Contains(string(got), "hello from") {
				t.Errorf("the upstream answered: %.200q", got)
			}
			if n := len(e.plainUp.requests()); n != before {
				t.Errorf("the upstream saw %d requests, want none", n-before)
			}
			if tc.reason != "" {
				e.events.wait(t, "denied tunnel", func(ev Event) bool {
					return ev.Kind == KindConnect && ev.Verdict == VerdictDenied && strings.Contains(ev.Reason, tc.reason)
				})
			}
		})
	}

	// Protocols that are not HTTP still pass as they are, whole lines or
	// not (the upstream answers 400: the bytes reached it as sent).
	for _, first := range []string{"EHLO client.test\r\n", "SSH-2.0-x\r\n", "\x00\x00\x00\x08\x04\xd2\x16\x2f"} {
		c, status := e.connect(t, target)
		if status != 200 {
			t.Fatalf("CONNECT = %d", status)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(c, first)
		_ = c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(got), "HTTP/1.1 400") {
			t.Errorf("%q through the tunnel: upstream answered %.100q, want its 400", first, got)
		}
	}
}

// After an Upgrade request the next bytes decide: a server that declined
// the switch would serve another request line for any Host, so that is
// read and checked as HTTP (it used to be relayed unread); a switched
// protocol's bytes pass as they are, however long the client waits first.
func TestConnectPlainHTTPUpgrade(t *testing.T) {
	e := newProxyEnvPeek(t, false, 300*time.Millisecond)
	target := "plain.allowed.test:" + strconv.Itoa(e.plainUp.port)
	open := func() (net.Conn, *bufio.Reader) {
		c, status := e.connect(t, target)
		if status != 200 {
			t.Fatalf("CONNECT %s = %d, want 200", target, status)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}

	c, br := open()
	fmt.Fprintf(c, "GET /decline HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", target)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade request: %v", err)
	}
	if body := readBody(t, resp); resp.StatusCode != 200 {
		t.Fatalf("declined upgrade: %d %q, want the server's 200", resp.StatusCode, body)
	}
	fmt.Fprint(c, "GET /fronted HTTP/1.1\r\nHost: forbidden.test\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("request after a declined upgrade: %v (want a 403)", err)
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, `"forbidden.test"`) {
		t.Errorf("request for another host after a declined upgrade: %d %q, want a 403 naming it", resp.StatusCode, body)
	}
	for _, r := range e.plainUp.requests() {
		if r.Path == "/fronted" {
			t.Errorf("the upstream saw %s %s after the declined upgrade", r.Host, r.Path)
		}
	}

	c, br = open()
	fmt.Fprintf(c, "GET /switch HTTP/1.1\r\nHost: %s\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n", target)
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("accepted upgrade: %v %v, want 101", resp, err)
	}
	time.Sleep(600 * time.Millisecond) // past the peek timeout: an upgraded client may wait
	frame := "\x81\x05hello"
	fmt.Fprint(c, frame)
	got := make([]byte, len(frame))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != frame {
		t.Errorf("echo through the switched protocol: %q %v, want %q", got, err, frame)
	}
}

// A server-first protocol through a tunnel: the server talks, and its
// client says nothing for longer than the peek timeout (a feed it only
// reads, a greeting it answers late). Nothing of the client's has been
// relayed unread, so the wait is not a way around a check: the tunnel
// stays open, the client's first bytes are inspected whenever they come,
// and a client that closes having sent nothing ends an allowed tunnel.
func TestConnectServerFirstClientSilent(t *testing.T) {
	tn := newTestNet()
	port := int(serveTCP(t, tn.up1, func(c net.Conn) {
		for i := range 6 {
			fmt.Fprintf(c, "feed %d\r\n", i)
			time.Sleep(100 * time.Millisecond)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			fmt.Fprintf(c, "got %s", line)
		}
	}).Port())
	target := "feed.test:" + strconv.Itoa(port)
	p := &Policy{Allow: mustEntries(t, target, cidrFor(tn.up1, port))}
	g := newTestGateway(t, tn, p, gatewayOpts{resolver: StaticResolver{"feed.test": {tn.up1}}, peek: 200 * time.Millisecond})

	// The server's first bytes may follow the CONNECT response at once:
	// read both through one reader.
	connect := func() (net.Conn, *bufio.Reader) {
		c, err := dialer(g.net.job).Dial("tcp4", g.reg.Addrs().Proxy.String())
		if err != nil {
			t.Fatalf("dialing proxy: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT %s = %v, %v; want 200", target, resp, err)
		}
		return c, br
	}
	c, br := connect()
	for i := range 6 { // 600 ms of the server alone: three peek timeouts
		line, err := br.ReadString('\n')
		if want := fmt.Sprintf("feed %d\r\n", i); err != nil || line != want {
			t.Fatalf("line %d through the tunnel = %q, %v; want %q", i, line, err, want)
		}
	}
	fmt.Fprint(c, "QUIT\r\n")
	if line, err := br.ReadString('\n'); err != nil || line != "got QUIT\r\n" {
		t.Errorf("the server's answer to the client's late first line = %q, %v", line, err)
	}
	c.Close()
	g.events.wait(t, "allowed tunnel", func(ev Event) bool {
		return ev.Kind == KindConnect && ev.Host == "feed.test" && ev.Verdict == VerdictAllowed && ev.Bytes > 0
	})

	// Read only, then close without a byte sent: allowed, not a denial.
	c2, br2 := connect()
	if line, err := br2.ReadString('\n'); err != nil || line != "feed 0\r\n" {
		t.Fatalf("second tunnel's first line = %q, %v", line, err)
	}
	time.Sleep(300 * time.Millisecond)
	_ = c2.(*net.TCPConn).CloseWrite()
	_, _ = io.ReadAll(br2)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var tunnels []Event
		for _, ev := range g.events.all() {
			if ev.Host == "feed.test" {
				tunnels = append(tunnels, ev)
			}
		}
		if len(tunnels) >= 2 || time.Now().After(deadline) {
			if len(tunnels) != 2 {
				t.Fatalf("feed tunnel events = %+v, want 2", tunnels)
			}
			if ev := tunnels[1]; ev.Kind != KindConnect || ev.Verdict != VerdictAllowed {
				t.Errorf("a tunnel the client closed silent was recorded %s %s: %s", ev.Kind, ev.Verdict, ev.Reason)
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}
