package netpolicy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// hopHeaders are removed from forwarded requests and responses (RFC 9110
// 7.6.1), together with the headers named in Connection.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// splitHostPortDefault splits "host[:port]", defaulting the port.
func splitHostPortDefault(hp string, def int) (string, int, error) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return normalizeHost(hp), def, nil
		}
		return "", 0, fmt.Errorf("parsing host %q: %w", hp, err)
	}
	port, err := parsePort(ps)
	if err != nil {
		return "", 0, fmt.Errorf("parsing host %q: %w", hp, err)
	}
	return normalizeHost(host), port, nil
}

// Rules the gateway names to the job when it refuses a destination (in
// 403/502 bodies and event reasons). They never name an address.
const (
	RuleNotInPolicy = "not in the job's egress policy (its declared egress within the admin's ceiling)"
	RuleNoHost      = "no destination host"
)

var errIPLiteral = errors.New("IP literal destinations are not allowed: only a CIDR entry of the admin's egress ceiling allows an address")

// refusal says, for the job, why a dial failed and with which status:
// 502 (the name is allowed, the upstream cannot be reached), with the rule
// of the dial guard that refused its address, or what went wrong.
func refusal(err error) (int, string) {
	var ge *GuardError
	var de *net.DNSError
	var ne net.Error
	switch {
	case errors.As(err, &ge):
		return http.StatusBadGateway, "refused: the name resolves to " + ge.what() + ": " + ge.Rule
	case errors.Is(err, errIPLiteral):
		return http.StatusBadGateway, "refused: " + errIPLiteral.Error()
	case errors.As(err, &de):
		return http.StatusBadGateway, "upstream unreachable: the gateway could not resolve the name"
	case errors.As(err, &ne) && ne.Timeout():
		return http.StatusBadGateway, "upstream unreachable: no answer in time"
	}
	return http.StatusBadGateway, "upstream unreachable: the connection failed"
}

// checkDestination applies the policy to a destination the client named.
// It returns "" when allowed, else the rule that refuses it.
func (j *jobState) checkDestination(host string, port int) string {
	if host == "" {
		return RuleNoHost
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if j.cfg.Policy.AllowsAddr(ip, port) {
			return ""
		}
		return errIPLiteral.Error()
	}
	if !j.cfg.Policy.Allows(host, port) {
		return RuleNotInPolicy
	}
	return ""
}

// bound returns true if a credential of the job is bound to host.
func (j *jobState) bound(host string) bool {
	for i := range j.cfg.Policy.Credentials {
		if j.cfg.Policy.Credentials[i].boundTo(host) {
			return true
		}
	}
	return false
}

// httpHandler serves the explicit proxy (CONNECT and absolute-URI plain
// HTTP) or the transparent HTTP listener (destination from Host).
func (j *jobState) httpHandler(explicit bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !j.enter() {
			http.Error(w, "airlock: the job has ended", http.StatusServiceUnavailable)
			return
		}
		defer j.wg.Done()
		if r.Method == http.MethodConnect {
			if !explicit {
				http.Error(w, "CONNECT is only served on the proxy port", http.StatusMethodNotAllowed)
				return
			}
			j.handleConnect(w, r)
			return
		}
		hostport := r.Host
		if explicit {
			if !r.URL.IsAbs() || r.URL.Scheme != "http" {
				http.Error(w, "this is an HTTP proxy: send absolute http:// URIs, or CONNECT for https", http.StatusBadRequest)
				return
			}
			hostport = r.URL.Host
		}
		j.forwardPlain(w, r, hostport)
	})
}

// forwardPlain proxies one plain-HTTP request to hostport.
func (j *jobState) forwardPlain(w http.ResponseWriter, r *http.Request, hostport string) {
	start := time.Now()
	host, port, err := splitHostPortDefault(hostport, 80)
	ev := Event{Kind: KindHTTP, Host: host, Port: port, Method: r.Method, Path: r.URL.Path, Verdict: VerdictDenied}
	if err != nil {
		ev.Reason = err.Error()
		j.emit(ev)
		http.Error(w, "bad destination", http.StatusBadRequest)
		return
	}
	if reason := j.checkDestination(host, port); reason != "" {
		ev.Reason, ev.Status = reason, http.StatusForbidden
		j.emit(ev)
		http.Error(w, "airlock: egress to "+net.JoinHostPort(host, strconv.Itoa(port))+" refused: "+reason, http.StatusForbidden)
		return
	}
	if hits := j.stripUnbound(r, host, port, j.g.findSurrogates(r)); len(hits) > 0 {
		inject, reason, grant := j.g.surrogateVerdict(j, host, hits, false)
		if reason != "" {
			j.emit(Event{Kind: KindAlert, Host: host, Port: port, Method: r.Method, Path: r.URL.Path,
				Verdict: VerdictDenied, Reason: reason, GrantID: grant, Status: http.StatusForbidden})
			http.Error(w, "airlock: credential surrogate refused", http.StatusForbidden)
			return
		}
		// Only credentials that allow plain HTTP get here; the request is
		// then reported as one the gateway swapped a credential into.
		for _, c := range inject {
			c.inject(r)
		}
		ev.Kind, ev.GrantID = KindProxied, grant
	}
	if !j.injectBodies(w, r, host, false, &ev, start) {
		return
	}

	j.forward(w, r, "http", host, port, ev, start)
}

// forward sends r to scheme://host:port through the job's transport and
// streams the response back; it emits ev completed with the outcome.
func (j *jobState) forward(w http.ResponseWriter, r *http.Request, scheme, host string, port int, ev Event, start time.Time) {
	j.forwardWith(nil, w, r, scheme, host, port, ev, start)
}

// forwardWith is forward through transport tr (nil: the job's).
func (j *jobState) forwardWith(tr *http.Transport, w http.ResponseWriter, r *http.Request, scheme, host string, port int, ev Event, start time.Time) {
	if tr == nil {
		tr = j.transport
	}
	// The job's context, not the request's: the server cancels a request's
	// context when the client half-closes its side after sending (printf |
	// nc), which would fail a request the client still waits for. A client
	// that is really gone fails the copy of the response below; Unregister
	// cancels the job's context.
	out := r.Clone(j.ctx)
	out.RequestURI = ""
	out.URL.Scheme = scheme
	out.URL.Host = host
	if (scheme == "http" && port != 80) || (scheme == "https" && port != 443) || isIPLiteral(host) {
		out.URL.Host = net.JoinHostPort(host, strconv.Itoa(port))
	}
	out.Host = out.URL.Host
	if r.ContentLength == 0 {
		out.Body = nil
	}
	removeHopHeaders(out.Header)
	resp, err := tr.RoundTrip(out)
	if err != nil {
		status, rule := refusal(err)
		ev.Verdict, ev.Reason, ev.Status = VerdictDenied, "upstream: "+err.Error(), status
		ev.Duration = time.Since(start)
		j.emit(ev)
		http.Error(w, "airlock: egress to "+out.URL.Host+" "+rule, status)
		return
	}
	defer resp.Body.Close()
	removeHopHeaders(resp.Header)
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	var dst io.Writer = w
	if resp.ContentLength < 0 {
		dst = &flushWriter{w: w, rc: http.NewResponseController(w)}
	}
	n, _ := io.Copy(dst, resp.Body)
	ev.Verdict, ev.Status, ev.Bytes, ev.Duration = VerdictAllowed, resp.StatusCode, n, time.Since(start)
	j.emit(ev)
}

// flushWriter flushes after every write so streamed responses (server-sent
// events, long polls) are not held in the response buffer.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// handleConnect serves CONNECT host:port: policy check, then either the
// credential interceptor (bound hosts) or a spliced tunnel whose TLS SNI
// must name the CONNECT host.
func (j *jobState) handleConnect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	host, ps, err := net.SplitHostPort(r.Host)
	port := 0
	if err == nil {
		port, err = parsePort(ps)
	}
	host = normalizeHost(host)
	ev := Event{Kind: KindConnect, Host: host, Port: port, Verdict: VerdictDenied}
	if err != nil {
		ev.Reason = "bad CONNECT target: " + err.Error()
		j.emit(ev)
		http.Error(w, "bad CONNECT target", http.StatusBadRequest)
		return
	}
	if reason := j.checkDestination(host, port); reason != "" {
		ev.Reason, ev.Status = reason, http.StatusForbidden
		j.emit(ev)
		http.Error(w, "airlock: egress to "+net.JoinHostPort(host, ps)+" refused: "+reason, http.StatusForbidden)
		return
	}
	ctx := r.Context()
	intercept := j.bound(host)
	var upstream *net.TCPConn
	if !intercept {
		upstream, err = j.dial(ctx, host, port)
		if err != nil {
			status, rule := refusal(err)
			ev.Reason, ev.Status = err.Error(), status
			j.emit(ev)
			http.Error(w, "airlock: egress to "+net.JoinHostPort(host, ps)+" "+rule, status)
			return
		}
	}
	rc := http.NewResponseController(w)
	conn, brw, err := rc.Hijack()
	if err != nil {
		if upstream != nil {
			_ = upstream.Close()
		}
		ev.Reason = "hijacking connection: " + err.Error()
		j.emit(ev)
		return
	}
	defer j.untrack(conn)
	defer conn.Close()
	prefix := buffered(brw.Reader)
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		if upstream != nil {
			_ = upstream.Close()
		}
		return
	}
	client := conn.(*net.TCPConn)
	if intercept {
		j.intercept(j.ctx, client, prefix, host, port)
		return
	}
	j.tunnel(client, upstream, prefix, host, port, start)
}

// buffered returns the bytes already read into br.
func buffered(br *bufio.Reader) []byte {
	n := br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := br.Peek(n)
	return append([]byte(nil), b...)
}
