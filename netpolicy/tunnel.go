package netpolicy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
)

// transparentTLSPort is the upstream port of transparently proxied TLS: the
// job namespace redirects only tcp/443 to the transparent TLS listener.
const transparentTLSPort = 443

// tlsRecordHandshake is the first byte of a TLS ClientHello record.
const tlsRecordHandshake = 0x16

var errPeekOnly = errors.New("peek only")

// recordingConn feeds crypto/tls the client's bytes and records them, so
// the ClientHello can be parsed without terminating TLS and then replayed.
type recordingConn struct {
	net.Conn
	r   io.Reader
	rec bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.rec.Write(p[:n])
	return n, err
}

func (c *recordingConn) Write([]byte) (int, error) { return 0, errPeekOnly }

// peekHello reads the client's first bytes (after prefix). If they start a
// TLS handshake it parses the ClientHello and returns its SNI. data is every
// byte consumed from the client (prefix included), to be replayed upstream.
func (j *jobState) peekHello(c net.Conn, prefix []byte) (sni string, data []byte, isTLS bool, err error) {
	if err := c.SetReadDeadline(time.Now().Add(j.g.cfg.PeekTimeout)); err != nil {
		return "", nil, false, fmt.Errorf("setting peek deadline: %w", err)
	}
	defer func() {
		if derr := c.SetReadDeadline(time.Time{}); derr != nil && err == nil {
			err = fmt.Errorf("clearing peek deadline: %w", derr)
		}
	}()
	if len(prefix) == 0 {
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			return "", nil, false, fmt.Errorf("reading client's first byte: %w", err)
		}
		prefix = b
	}
	if prefix[0] != tlsRecordHandshake {
		return "", prefix, false, nil
	}
	rc := &recordingConn{Conn: c, r: io.MultiReader(bytes.NewReader(prefix), c)}
	var hello *tls.ClientHelloInfo
	srv := tls.Server(rc, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = h
			return nil, errPeekOnly
		},
	})
	herr := srv.Handshake()
	if hello == nil {
		return "", rc.rec.Bytes(), true, fmt.Errorf("parsing TLS ClientHello: %w", herr)
	}
	return normalizeHost(hello.ServerName), rc.rec.Bytes(), true, nil
}

// tunnel splices an allowed CONNECT tunnel. Server-to-client bytes flow at
// once (server-first protocols); the client's first bytes are inspected: a
// TLS ClientHello must carry no SNI or the CONNECT host (no fronting through
// an allowed name). A CONNECT to an admin-allowed IP literal may carry any SNI.
// Plaintext HTTP in a tunnel is read request by request, and each request's
// Host must name the CONNECT host too (see relayPlain).
func (j *jobState) tunnel(client, upstream *net.TCPConn, prefix []byte, host string, port int, start time.Time) {
	defer upstream.Close()
	stop := context.AfterFunc(j.ctx, func() { _ = client.Close(); _ = upstream.Close() })
	defer stop()
	var refusing atomic.Bool // a refusal is being written: keep the client's write side open
	down := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(client, upstream)
		if !refusing.Load() {
			_ = client.CloseWrite()
		}
		down <- n
	}()
	ev := Event{Kind: KindConnect, Host: host, Port: port, Addr: upstream.RemoteAddr().String(), Verdict: VerdictDenied}
	if len(prefix) == 0 {
		// The client's first byte may take as long as it likes: in a
		// server-first protocol the client speaks after the server, late
		// or never (a feed it only reads). Nothing of its own has passed
		// unread, so waiting is no way around the checks below, which
		// start when it comes (with the peek timeout from there on).
		b := make([]byte, 1)
		if _, err := io.ReadFull(client, b); err != nil {
			// Closed (or broken) having sent nothing: a tunnel that
			// carried the server's bytes only.
			_ = upstream.CloseWrite()
			ev.Verdict = VerdictAllowed
			ev.Bytes = <-down
			ev.Duration = time.Since(start)
			j.emit(ev)
			return
		}
		prefix = b
	}
	sni, data, isTLS, err := j.peekHello(client, prefix)
	switch {
	case err != nil:
		ev.Kind, ev.Reason = KindTLS, err.Error()
	case isTLS && sni != "" && sni != host && !isIPLiteral(host):
		ev.Kind, ev.Reason = KindTLS, fmt.Sprintf("TLS SNI %q does not match CONNECT host %q", sni, host)
	default:
		ev.Verdict = VerdictAllowed
	}
	if ev.Verdict == VerdictDenied {
		// Recorded before the client sees the close: a job that exits at
		// once must not end before its denial is in its summary and trail.
		ev.Duration = time.Since(start)
		j.emit(ev)
		_ = client.Close()
		_ = upstream.Close()
		<-down
		return
	}
	var up int64
	if isTLS || isIPLiteral(host) {
		if _, err := upstream.Write(data); err == nil {
			up, _ = io.Copy(upstream, client)
			up += int64(len(data))
		}
	} else {
		var refusal string
		var unchecked error
		up, refusal, unchecked = j.relayPlain(client, upstream, data, host, port, &refusing)
		if unchecked != nil {
			// Denied before the client sees the refusal, as above.
			ev.Verdict, ev.Reason = VerdictDenied, unchecked.Error()
			ev.Duration = time.Since(start)
			j.emit(ev)
			refusal = "airlock: refused: " + unchecked.Error()
		}
		if refusal != "" {
			refusing.Store(true)
			_ = upstream.Close()
			n := <-down
			writeRefusal(client, refusal)
			_ = client.Close()
			if unchecked == nil {
				ev.Bytes, ev.Duration = up+n, time.Since(start)
				j.emit(ev)
			}
			return
		}
	}
	_ = upstream.CloseWrite()
	ev.Bytes = up + <-down
	ev.Duration = time.Since(start)
	j.emit(ev)
}

// writeRefusal answers a refused request inside a tunnel with a 403.
func writeRefusal(c net.Conn, body string) {
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	body += "\n"
	fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

// maxRequestLine bounds the first line looked at to tell HTTP from other
// plaintext protocols in a tunnel.
const maxRequestLine = 8 << 10

// relayPlain relays the client's side of a plaintext tunnel. If its first
// line is an HTTP/1.x request line, every request on the connection is
// parsed, its Host (and absolute URI) must name the CONNECT host and port
// — else the tunnel ends with a 403 and a denied http event, so keep-alive
// cannot switch to a virtual host the policy never allowed — and each
// request is recorded as an http event. After an Upgrade request the next
// bytes decide again: another request line is checked, anything else is
// the new protocol, relayed as it is. Other protocols are relayed
// unchanged. It returns
// the bytes sent upstream and, for a refusal, the 403 body; unchecked
// says why a first line that could not be told from HTTP was refused
// without a byte sent upstream.
func (j *jobState) relayPlain(client, upstream *net.TCPConn, data []byte, host string, port int, refusing *atomic.Bool) (sent int64, refusal string, unchecked error) {
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(data), client), 16<<10)
	httpish, err := j.classifyLine(client, br, j.g.cfg.PeekTimeout)
	if err != nil {
		return 0, "", err
	}
	if !httpish {
		n := int64(br.Buffered())
		b, _ := br.Peek(br.Buffered())
		if _, err := upstream.Write(b); err != nil {
			return 0, "", nil
		}
		m, _ := io.Copy(upstream, client)
		return n + m, "", nil
	}
	cw := &countingWriter{w: upstream}
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return cw.n, "", nil // end of the client's stream (or not HTTP any more)
		}
		ev := Event{Kind: KindHTTP, Host: host, Port: port, Method: req.Method, Path: req.URL.Path, Verdict: VerdictAllowed,
			Reason: "inside a CONNECT tunnel"}
		if reason := tunnelHostMismatch(req, host, port); reason != "" {
			refusing.Store(true)
			ev.Verdict, ev.Reason, ev.Status = VerdictDenied, reason, http.StatusForbidden
			if h, _, err := splitHostPortDefault(req.Host, port); err == nil && h != "" {
				ev.Host = h
			}
			j.emit(ev)
			return cw.n, "airlock: refused: " + reason + ": a tunnel carries requests for its own host only; send plain http:// requests to the proxy", nil
		}
		j.emit(ev)
		if _, ok := req.Header["User-Agent"]; !ok {
			req.Header.Set("User-Agent", "") // Write would add Go's
		}
		if err := req.Write(cw); err != nil {
			return cw.n, "", nil
		}
		if req.Header.Get("Upgrade") != "" {
			// Whether the server switched protocols is in its answer,
			// which this side does not read: what the client sends next
			// decides. Another request line is read and checked as HTTP
			// (a server that declined the upgrade would serve it, for any
			// Host); anything else — a WebSocket frame — is the new
			// protocol, relayed as it is. No deadline: an upgraded client
			// may stay silent while the server talks.
			more, err := j.classifyLine(client, br, 0)
			if err != nil || !more {
				if err == nil {
					_, _ = io.Copy(cw, br)
				}
				return cw.n, "", nil // err: the client's connection broke
			}
		}
	}
}

// tunnelHostMismatch says why a request inside a tunnel to host:port names
// another destination ("" if it does not).
func tunnelHostMismatch(req *http.Request, host string, port int) string {
	for _, hp := range []string{req.Host, req.URL.Host} {
		if hp == "" {
			continue
		}
		h, p, err := splitHostPortDefault(hp, port)
		if err != nil || h != host || p != port {
			return fmt.Sprintf("request for %q inside a CONNECT tunnel to %s", hp, net.JoinHostPort(host, strconv.Itoa(port)))
		}
	}
	if req.Host == "" {
		return fmt.Sprintf("request without Host inside a CONNECT tunnel to %s", net.JoinHostPort(host, strconv.Itoa(port)))
	}
	return ""
}

// classifyLine peeks (without consuming) at the client's next line and
// reports whether it starts HTTP/1.x: a method token of upper-case
// letters, a space, and " HTTP/" before the line ends (a server may take
// what follows the version; http.ReadRequest then decides). A first byte
// or token that cannot start a method is another protocol at once, and so
// is a stream that ends before the line does (it cannot carry a Host). A
// line that could still be a request line when timeout passes (0: no
// timeout, the line waits for its bytes however long they take), or that
// runs past maxRequestLine, is an error: relaying it unread would let a
// client that pauses, or pads its target, past the check send a request
// with any Host.
func (j *jobState) classifyLine(client net.Conn, br *bufio.Reader, timeout time.Duration) (bool, error) {
	if timeout > 0 {
		_ = client.SetReadDeadline(time.Now().Add(timeout))
		defer func() { _ = client.SetReadDeadline(time.Time{}) }()
	}
	for n := 1; ; n++ {
		if n > maxRequestLine {
			return false, fmt.Errorf("the first line in a plaintext tunnel is longer than %d bytes and could be an HTTP request line", maxRequestLine)
		}
		b, err := br.Peek(n)
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil && timeout == 0 {
			return false, fmt.Errorf("reading a line in a plaintext tunnel: %w", err)
		}
		if err != nil {
			return false, fmt.Errorf("the first line in a plaintext tunnel could still be an HTTP request line after %s: %w", timeout, err)
		}
		c := b[n-1]
		sp := bytes.IndexByte(b, ' ')
		switch {
		case sp == 0:
			return false, nil
		case sp < 0 && (c < 'A' || c > 'Z'):
			return false, nil // not a method token
		case sp < 0 && n > 20:
			return false, nil
		case c == '\n':
			return bytes.Contains(b[sp:], []byte(" HTTP/")), nil
		}
	}
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func isIPLiteral(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// serveTransparentTLS accepts redirected tcp/443 connections.
func (j *jobState) serveTransparentTLS(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				j.log.Error("transparent TLS listener stopped", "error", err)
			}
			return
		}
		j.wg.Go(func() { j.handleTransparentTLS(ctx, c.(*net.TCPConn)) })
	}
}

// handleTransparentTLS routes one redirected TLS connection by its SNI.
func (j *jobState) handleTransparentTLS(ctx context.Context, client *net.TCPConn) {
	defer j.untrack(client)
	defer client.Close()
	start := time.Now()
	ev := Event{Kind: KindTLS, Port: transparentTLSPort, Verdict: VerdictDenied}
	deny := func(reason string) {
		ev.Reason, ev.Duration = reason, time.Since(start)
		j.emit(ev)
	}
	sni, data, isTLS, err := j.peekHello(client, nil)
	switch {
	case err != nil:
		deny(err.Error())
		return
	case !isTLS:
		deny("not a TLS connection")
		return
	case sni == "":
		deny("TLS ClientHello without SNI")
		return
	}
	ev.Host = sni
	if reason := j.checkDestination(sni, transparentTLSPort); reason != "" {
		deny(reason)
		return
	}
	if j.bound(sni) {
		j.intercept(ctx, client, data, sni, transparentTLSPort)
		return
	}
	upstream, err := j.dial(ctx, sni, transparentTLSPort)
	if err != nil {
		deny(err.Error())
		return
	}
	defer upstream.Close()
	stop := context.AfterFunc(j.ctx, func() { _ = client.Close(); _ = upstream.Close() })
	defer stop()
	ev.Addr = upstream.RemoteAddr().String()
	down := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(client, upstream)
		_ = client.CloseWrite()
		down <- n
	}()
	up := int64(0)
	if _, err := upstream.Write(data); err == nil {
		up, _ = io.Copy(upstream, client)
		up += int64(len(data))
	}
	_ = upstream.CloseWrite()
	ev.Verdict, ev.Bytes, ev.Duration = VerdictAllowed, up+<-down, time.Since(start)
	j.emit(ev)
}
