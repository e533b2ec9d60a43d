package netpolicy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// prefixConn replays bytes already consumed from a connection.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// oneConnListener hands one connection to an http.Server, then blocks in
// Accept until that connection is done, so Serve returns only afterwards.
type oneConnListener struct {
	conn net.Conn
	once sync.Once
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.conn })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// intercept terminates the client's TLS for a credential-bound host with a
// leaf minted by the runner CA (ALPN: http/1.1 only), then serves HTTP/1.1
// requests, forwarding each to the real host over verified TLS with the
// job's surrogates swapped for their values.
func (j *jobState) intercept(ctx context.Context, client *net.TCPConn, prefix []byte, host string, port int) {
	start := time.Now()
	var conn net.Conn = client
	if len(prefix) > 0 {
		conn = &prefixConn{Conn: client, r: io.MultiReader(strings.NewReader(string(prefix)), client)}
	}
	var sniMismatch string
	tc := tls.Server(conn, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if sni := normalizeHost(hi.ServerName); sni != "" && sni != host {
				sniMismatch = fmt.Sprintf("TLS SNI %q does not match host %q", sni, host)
				return nil, fmt.Errorf("SNI %q not served here", sni)
			}
			return j.g.cfg.CA.leaf(host)
		},
	})
	ev := Event{Kind: KindTLS, Host: host, Port: port, Verdict: VerdictDenied}
	hctx, cancel := context.WithTimeout(ctx, j.g.cfg.PeekTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		ev.Reason = "intercepting TLS: " + err.Error()
		if sniMismatch != "" {
			ev.Reason = sniMismatch
		}
		ev.Duration = time.Since(start)
		j.emit(ev)
		return
	}
	ev.Verdict, ev.Reason = VerdictAllowed, "intercepted for credential injection"
	j.emit(ev)

	ln := &oneConnListener{conn: tc, done: make(chan struct{})}
	var doneOnce sync.Once
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			j.serveIntercepted(w, r, host, port)
		}),
		ReadHeaderTimeout: j.g.cfg.PeekTimeout,
		IdleTimeout:       2 * time.Minute,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
		ErrorLog:          j.log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				doneOnce.Do(func() { close(ln.done) })
			}
		},
	}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close(); doneOnce.Do(func() { close(ln.done) }) })
	defer stop()
	_ = srv.Serve(ln)
}

// serveIntercepted checks and forwards one request of an intercepted
// connection.
func (j *jobState) serveIntercepted(w http.ResponseWriter, r *http.Request, host string, port int) {
	start := time.Now()
	ev := Event{Kind: KindProxied, Host: host, Port: port, Method: r.Method, Path: r.URL.Path, Verdict: VerdictDenied}
	if reqHost, _, err := splitHostPortDefault(r.Host, port); err != nil || reqHost != host {
		ev.Status, ev.Reason = http.StatusForbidden, fmt.Sprintf("Host %q does not match the intercepted host", r.Host)
		j.emit(ev)
		http.Error(w, "airlock: Host does not match the TLS server name", http.StatusForbidden)
		return
	}
	inject, reason, grant := j.g.surrogateVerdict(j, host, j.stripUnbound(r, host, port, j.g.findSurrogates(r)), true)
	if reason != "" {
		ev.Kind, ev.Status, ev.Reason, ev.GrantID = KindAlert, http.StatusForbidden, reason, grant
		ev.Duration = time.Since(start)
		j.emit(ev)
		w.Header().Set("Connection", "close")
		http.Error(w, "airlock: credential surrogate refused", http.StatusForbidden)
		return
	}
	for _, c := range inject {
		c.inject(r)
	}
	ev.GrantID = grant
	if !j.injectBodies(w, r, host, true, &ev, start) {
		return
	}
	var tr *http.Transport
	if mc := j.clientCert(host); mc != nil {
		tr = j.mtlsTransport(mc)
		ev.CertGrantID, ev.CertFingerprint = mc.GrantID, mc.CertFingerprint()
	}
	j.forwardWith(tr, w, r, "https", host, port, ev, start)
}
