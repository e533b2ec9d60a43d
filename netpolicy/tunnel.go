package netpolicy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
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
func (j *jobState) tunnel(client, upstream *net.TCPConn, prefix []byte, host string, port int, start time.Time) {
	defer upstream.Close()
	stop := context.AfterFunc(j.ctx, func() { _ = client.Close(); _ = upstream.Close() })
	defer stop()
	down := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(client, upstream)
		_ = client.CloseWrite()
		down <- n
	}()
	ev := Event{Kind: KindConnect, Host: host, Port: port, Addr: upstream.RemoteAddr().String(), Verdict: VerdictDenied}
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
		_ = client.Close()
		_ = upstream.Close()
		<-down
		ev.Duration = time.Since(start)
		j.emit(ev)
		return
	}
	up := int64(0)
	if _, err := upstream.Write(data); err == nil {
		up, _ = io.Copy(upstream, client)
		up += int64(len(data))
	}
	_ = upstream.CloseWrite()
	ev.Bytes = up + <-down
	ev.Duration = time.Since(start)
	j.emit(ev)
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
