package netpolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/dns"
)

// Default listener ports on each job's gateway address. The firewall allows
// the job to reach exactly these, and DNATs the job's tcp/80 and tcp/443 to
// TransparentHTTPPort and TransparentTLSPort.
const (
	DNSPort             = 53
	ProxyPort           = 3128
	TransparentHTTPPort = 3129
	TransparentTLSPort  = 3130
)

// Ports are the gateway listener ports. Zero means "any free port" (the
// bound addresses are reported by Registration.Addrs).
type Ports struct {
	DNS             int
	Proxy           int
	TransparentHTTP int
	TransparentTLS  int
}

// DefaultPorts returns the production ports.
func DefaultPorts() Ports {
	return Ports{DNS: DNSPort, Proxy: ProxyPort, TransparentHTTP: TransparentHTTPPort, TransparentTLS: TransparentTLSPort}
}

// GatewayConfig configures a Gateway.
type GatewayConfig struct {
	// Resolver resolves the names the gateway dials. Required; use
	// HostsResolver{Hosts, SystemResolver{}} in production.
	Resolver Resolver
	// Guard configures the dial guard.
	Guard GuardConfig
	// Events receives every decision (may be nil; see EventSink for the
	// ordering and back-pressure contract, and BatchSink). EventBuffer is
	// the length of each job's queue in front of it (default 8192);
	// EventWait how long a job's handler waits for room in a full queue
	// before the event is dropped and counted (default 5s; DroppedEvents).
	Events      EventSink
	EventBuffer int
	EventWait   time.Duration
	Logger      hclog.Logger
	// CA terminates TLS for credential-bound hosts; required when a job
	// policy carries Credentials.
	CA *CA
	// RootCAs verifies upstream servers of intercepted connections (nil:
	// the system roots).
	RootCAs *x509.CertPool
	// Ports; nil means DefaultPorts().
	Ports *Ports
	// DialTimeout bounds each upstream dial (default 10s); PeekTimeout the
	// wait for a client's first bytes / TLS handshake (default 30s).
	DialTimeout time.Duration
	PeekTimeout time.Duration
	// DNSTTL is the TTL of DNS answers (default 30s).
	DNSTTL time.Duration
	// EgressSource, if valid, is the local address every upstream
	// connection is bound to ([gateway] egress_source), so that API keys
	// and tokens can be IP-restricted at the provider to the runner hosts.
	// A dial the address cannot make (another address family) fails.
	EgressSource netip.Addr
}

// JobConfig identifies one job to the gateway.
type JobConfig struct {
	JobID     string
	GatewayIP netip.Addr // host side of the job's veth; listeners bind here
	JobIP     netip.Addr // the only source address accepted
	Policy    *Policy
	// Mask, if set, is applied to everything the job chose (host names,
	// paths, methods, reasons quoting them) before any log line, summary,
	// metric or event sees it. Pass a case-insensitive masker
	// (mask.Writer.MaskFold): DNS names arrive case-folded.
	Mask func(string) string
}

// Gateway is the egress gateway of one runner: one listener set per job on
// the job's gateway address. It is safe for concurrent use.
type Gateway struct {
	cfg   GatewayConfig
	ports Ports
	log   hclog.Logger
	guard *DialGuard
	// dropped counts events lost to a full queue, over every job.
	dropped atomic.Int64

	mu     sync.Mutex
	jobs   map[string]*jobState
	closed bool

	// dialHook (tests) runs after the dial guard admitted an address,
	// before connect(2); an error aborts the dial.
	dialHook func(address string) error

	surMu      sync.RWMutex
	surrogates map[string]*surrogateOwner
	// surTails indexes surrogates by their last surrogateTailLen bytes.
	surTails map[string][]string
}

// NewGateway validates cfg and returns a gateway with no jobs.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("creating gateway: no resolver configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.EventBuffer <= 0 {
		cfg.EventBuffer = 8192
	}
	if cfg.EventWait <= 0 {
		cfg.EventWait = 5 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.PeekTimeout <= 0 {
		cfg.PeekTimeout = 30 * time.Second
	}
	if cfg.DNSTTL <= 0 {
		cfg.DNSTTL = 30 * time.Second
	}
	ports := DefaultPorts()
	if cfg.Ports != nil {
		ports = *cfg.Ports
	}
	return &Gateway{
		cfg:        cfg,
		ports:      ports,
		log:        cfg.Logger.Named("gateway"),
		guard:      NewDialGuard(cfg.Guard),
		jobs:       map[string]*jobState{},
		surrogates: map[string]*surrogateOwner{},
		surTails:   map[string][]string{},
	}, nil
}

// DroppedEvents is the number of events lost to a full queue.
func (g *Gateway) DroppedEvents() int64 { return g.dropped.Load() }

// Guard returns the gateway's dial guard.
func (g *Gateway) Guard() *DialGuard { return g.guard }

// Addrs are the bound listener addresses of one job.
type Addrs struct {
	DNS             netip.AddrPort // UDP and TCP
	Proxy           netip.AddrPort
	TransparentHTTP netip.AddrPort
	TransparentTLS  netip.AddrPort
}

// Registration is one job's listener set. Close (or Gateway.Unregister)
// stops it; Summary stays readable afterwards.
type Registration struct {
	j *jobState
}

// Addrs returns the bound listener addresses.
func (r *Registration) Addrs() Addrs { return r.j.addrs }

// Summary returns the job's decision counts so far. After Close it is
// final and every event it counts has reached the sink (or its count is in
// a KindDropped event).
func (r *Registration) Summary() Summary {
	s := r.j.summary.snapshot()
	s.Dropped = r.j.q.nDropped.Load()
	return s
}

// Close unregisters the job: it closes the listeners and every in-flight
// connection and retires the job's surrogates. It is idempotent.
func (r *Registration) Close() error { return r.j.g.Unregister(r.j.cfg.JobID) }

// jobState is the gateway's view of one registered job.
type jobState struct {
	g         *Gateway
	cfg       JobConfig
	log       hclog.Logger
	summary   summaryCounter
	q         *jobQueue
	transport *http.Transport
	mtls      map[string]*http.Transport // by grant: presents its client certificate (mu)
	// ctx is cancelled by Unregister; every dial and upstream request of
	// the job derives from it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	addrs  Addrs

	dnsServers  []*dns.Server
	httpServers []*http.Server
	tlsListener net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup

	// bodies bounds the form bodies read at once to swap a surrogate in
	// (maxFormBodies of at most maxFormBody each).
	bodies chan struct{}
}

// Register starts the listeners of a job on cfg.GatewayIP. On error nothing
// is left running.
func (g *Gateway) Register(ctx context.Context, cfg JobConfig) (*Registration, error) {
	if err := g.checkJob(cfg); err != nil {
		return nil, fmt.Errorf("registering job %s with the gateway: %w", cfg.JobID, err)
	}
	j := &jobState{
		g:      g,
		cfg:    cfg,
		log:    g.log.With("job", cfg.JobID),
		conns:  map[net.Conn]struct{}{},
		bodies: make(chan struct{}, maxFormBodies),
	}
	j.transport = &http.Transport{
		DialContext:           j.dialContext,
		TLSClientConfig:       &tls.Config{RootCAs: g.cfg.RootCAs, MinVersion: tls.VersionTLS12},
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   g.cfg.DialTimeout,
		ResponseHeaderTimeout: 5 * time.Minute,
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, fmt.Errorf("registering job %s with the gateway: gateway closed", cfg.JobID)
	}
	if _, dup := g.jobs[cfg.JobID]; dup {
		g.mu.Unlock()
		return nil, fmt.Errorf("registering job %s with the gateway: already registered", cfg.JobID)
	}
	for _, o := range g.jobs {
		if o.cfg.JobIP == cfg.JobIP || o.cfg.GatewayIP == cfg.GatewayIP {
			g.mu.Unlock()
			return nil, fmt.Errorf("registering job %s with the gateway: addresses already used by job %s", cfg.JobID, o.cfg.JobID)
		}
	}
	j.ctx, j.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	j.q = newJobQueue(cfg.JobID, g.cfg.Events, g.cfg.EventBuffer, g.cfg.EventWait, &g.dropped)
	g.jobs[cfg.JobID] = j
	g.mu.Unlock()

	err := g.addSurrogates(cfg.JobID, cfg.Policy.Credentials)
	if err == nil {
		err = j.start(ctx)
		if err != nil {
			// Never used: forget them, so a retry may register them again.
			g.dropSurrogates(cfg.JobID)
		}
	}
	if err != nil {
		g.mu.Lock()
		delete(g.jobs, cfg.JobID)
		g.mu.Unlock()
		return nil, errors.Join(fmt.Errorf("registering job %s with the gateway: %w", cfg.JobID, err), j.stop())
	}
	j.log.Debug("gateway registered", "gateway", cfg.GatewayIP, "job_ip", cfg.JobIP,
		"proxy", j.addrs.Proxy, "dns", j.addrs.DNS)
	return &Registration{j: j}, nil
}

func (g *Gateway) checkJob(cfg JobConfig) error {
	var errs []error
	if cfg.JobID == "" {
		errs = append(errs, errors.New("empty job id"))
	}
	if !cfg.GatewayIP.Is4() {
		errs = append(errs, fmt.Errorf("gateway address %s is not IPv4", cfg.GatewayIP))
	}
	if !cfg.JobIP.IsValid() {
		errs = append(errs, errors.New("no job address"))
	}
	if cfg.Policy == nil {
		errs = append(errs, errors.New("no policy"))
	} else {
		if len(cfg.Policy.Credentials) > 0 && g.cfg.CA == nil {
			errs = append(errs, errors.New("policy has credentials but the gateway has no CA"))
		}
		for i := range cfg.Policy.Credentials {
			if err := cfg.Policy.Credentials[i].validate(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Unregister stops a job's listeners and connections and retires its
// surrogates. Unknown or already unregistered jobs are not an error.
func (g *Gateway) Unregister(jobID string) error {
	g.mu.Lock()
	j, ok := g.jobs[jobID]
	delete(g.jobs, jobID)
	g.mu.Unlock()
	g.retireSurrogates(jobID)
	if !ok {
		return nil
	}
	if err := j.stop(); err != nil {
		return fmt.Errorf("unregistering job %s from the gateway: %w", jobID, err)
	}
	return nil
}

// Close unregisters every job and flushes the event queue.
func (g *Gateway) Close() error {
	g.mu.Lock()
	g.closed = true
	ids := make([]string, 0, len(g.jobs))
	for id := range g.jobs {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	var errs []error
	for _, id := range ids {
		errs = append(errs, g.Unregister(id))
	}
	return errors.Join(errs...)
}

func (j *jobState) start(ctx context.Context) error {
	lc := net.ListenConfig{}
	gw := j.cfg.GatewayIP.String()
	listen := func(port int) (net.Listener, netip.AddrPort, error) {
		ln, err := lc.Listen(ctx, "tcp4", net.JoinHostPort(gw, strconv.Itoa(port)))
		if err != nil {
			return nil, netip.AddrPort{}, fmt.Errorf("listening on %s:%d: %w", gw, port, err)
		}
		return ln, ln.Addr().(*net.TCPAddr).AddrPort(), nil
	}

	// DNS, UDP and TCP on the same port.
	pc, err := lc.ListenPacket(ctx, "udp4", net.JoinHostPort(gw, strconv.Itoa(j.g.ports.DNS)))
	if err != nil {
		return fmt.Errorf("listening on %s udp/%d: %w", gw, j.g.ports.DNS, err)
	}
	j.addrs.DNS = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	dnsTCP, _, err := listen(int(j.addrs.DNS.Port()))
	if err != nil {
		return errors.Join(err, pc.Close())
	}
	if err := j.startDNS(pc, &sourceListener{Listener: dnsTCP, j: j}); err != nil {
		return err
	}

	for _, l := range []struct {
		port     int
		addr     *netip.AddrPort
		explicit bool
	}{
		{j.g.ports.Proxy, &j.addrs.Proxy, true},
		{j.g.ports.TransparentHTTP, &j.addrs.TransparentHTTP, false},
	} {
		ln, ap, err := listen(l.port)
		if err != nil {
			return err
		}
		*l.addr = ap
		srv := &http.Server{
			Handler:           j.httpHandler(l.explicit),
			ReadHeaderTimeout: j.g.cfg.PeekTimeout,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          j.log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
			ConnState:         j.connState,
			BaseContext:       func(net.Listener) context.Context { return j.ctx },
		}
		j.mu.Lock()
		j.httpServers = append(j.httpServers, srv)
		j.mu.Unlock()
		sl := &sourceListener{Listener: ln, j: j, track: true}
		j.wg.Go(func() {
			if err := srv.Serve(sl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				j.log.Error("proxy listener stopped", "addr", ap, "error", err)
			}
		})
	}

	ln, ap, err := listen(j.g.ports.TransparentTLS)
	if err != nil {
		return err
	}
	j.addrs.TransparentTLS = ap
	j.mu.Lock()
	j.tlsListener = ln
	j.mu.Unlock()
	sl := &sourceListener{Listener: ln, j: j, track: true}
	j.wg.Go(func() { j.serveTransparentTLS(j.ctx, sl) })
	return nil
}

func (j *jobState) stop() error {
	j.cancel(errors.New("job unregistered from the gateway"))
	j.mu.Lock()
	j.closed = true
	servers := j.httpServers
	tlsLn := j.tlsListener
	dnsServers := j.dnsServers
	conns := make([]net.Conn, 0, len(j.conns))
	for c := range j.conns {
		conns = append(conns, c)
	}
	j.mu.Unlock()

	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Close())
	}
	if tlsLn != nil {
		if err := tlsLn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("closing transparent TLS listener: %w", err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range dnsServers {
		if err := s.ShutdownContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping DNS server: %w", err))
		}
	}
	for _, c := range conns {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("closing connection from %s: %w", c.RemoteAddr(), err))
		}
	}
	j.transport.CloseIdleConnections()
	j.mu.Lock()
	for _, t := range j.mtls {
		t.CloseIdleConnections()
	}
	j.mu.Unlock()
	done := make(chan struct{})
	go func() { j.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, errors.New("timed out waiting for gateway connections to finish"))
	}
	// Every handler has emitted its last event: deliver what is queued.
	j.q.close()
	return errors.Join(errs...)
}

// enter admits one request handler; it fails once the job is closed.
// Handlers that entered are waited for by stop, so their events reach the
// sink before Unregister returns.
func (j *jobState) enter() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return false
	}
	j.wg.Add(1)
	return true
}

// track records an in-flight connection; it fails once the job is closed.
func (j *jobState) track(c net.Conn) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return false
	}
	j.conns[c] = struct{}{}
	return true
}

func (j *jobState) untrack(c net.Conn) {
	j.mu.Lock()
	delete(j.conns, c)
	j.mu.Unlock()
}

func (j *jobState) connState(c net.Conn, s http.ConnState) {
	if s == http.StateClosed {
		j.untrack(c)
	}
}

// emit masks what the job chose, fills in the job and time, counts the
// event and queues it (waiting, if the job's queue is full).
func (j *jobState) emit(ev Event) {
	ev.Job = j.cfg.JobID
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if ev.Verdict == VerdictDenied && ev.Kind != KindAlert && ev.Host != "" {
		if owner := j.g.mtlsOwner(j, ev.Host); owner != "" {
			// Like a surrogate presented by the wrong job: the host's
			// client certificate is another job's.
			ev.Kind = KindAlert
			ev.Reason = fmt.Sprintf("request to a host whose client certificate belongs to another job (%s): %s", owner, ev.Reason)
		}
	}
	if m := j.cfg.Mask; m != nil {
		ev.Host, ev.Path, ev.Method, ev.Reason = m(ev.Host), m(ev.Path), m(ev.Method), m(ev.Reason)
	}
	j.summary.add(ev)
	if ev.Verdict == VerdictDenied {
		j.log.Debug("egress denied", "kind", ev.Kind, "host", ev.Host, "port", ev.Port, "reason", ev.Reason)
	}
	j.q.push(ev)
}

// sourceListener drops connections whose source is not the job's address.
type sourceListener struct {
	net.Listener
	j     *jobState
	track bool
}

// Accept returns the next connection from the job's address, unwrapped (a
// *net.TCPConn, so splice(2) stays available).
func (l *sourceListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		if src != l.j.cfg.JobIP {
			_ = c.Close()
			ev := Event{Kind: KindConnect, Addr: src.String(), Verdict: VerdictDenied,
				Reason: "connection from a source address that is not the job's"}
			if l.j.holdsMTLS() {
				ev.Kind, ev.Reason = KindAlert, "connection from another address to the gateway of a job holding client certificates"
			}
			l.j.emit(ev)
			continue
		}
		if l.track && !l.j.track(c) {
			_ = c.Close()
			return nil, net.ErrClosed
		}
		return c, nil
	}
}

// dial resolves host itself (never trusting an address the client chose)
// and connects through the dial guard. An IP literal host is dialed only
// when a CIDR entry allows it.
func (j *jobState) dial(ctx context.Context, host string, port int) (*net.TCPConn, error) {
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(normalizeHost(host)); err == nil {
		if !j.cfg.Policy.AllowsAddr(ip, port) {
			return nil, fmt.Errorf("dialing %s: %w", ip, errIPLiteral)
		}
		addrs = []netip.Addr{ip.Unmap()}
	} else {
		addrs, err = j.g.cfg.Resolver.LookupIP(ctx, normalizeHost(host))
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("resolving %s: no addresses", host)
		}
	}
	var admin netip.Addr
	if ar, ok := j.g.cfg.Resolver.(AdminResolver); ok {
		admin, _ = ar.AdminAddr(normalizeHost(host))
	}
	control := j.g.guard.control(j.cfg.Policy, admin)
	if hook := j.g.dialHook; hook != nil {
		guard := control
		control = func(network, address string, c syscall.RawConn) error {
			if err := guard(network, address, c); err != nil {
				return err
			}
			return hook(address)
		}
	}
	d := net.Dialer{Timeout: j.g.cfg.DialTimeout, Control: control}
	if src := j.g.cfg.EgressSource; src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	var errs []error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(a.Unmap(), uint16(port)).String())
		if err == nil {
			return c.(*net.TCPConn), nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("dialing %s:%d: %w", host, port, errors.Join(errs...))
}

// dialContext is the per-job http.Transport dialer.
func (j *jobState) dialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %q: %w", addr, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return nil, fmt.Errorf("dialing %q: bad port: %w", addr, err)
	}
	return j.dial(ctx, host, port)
}

// holdsMTLS reports whether the job was given client certificates.
func (j *jobState) holdsMTLS() bool {
	for i := range j.cfg.Policy.Credentials {
		if j.cfg.Policy.Credentials[i].IsMTLS() {
			return true
		}
	}
	return false
}

// mtlsOwner returns the id of another running job whose client
// certificate is bound to host, or "".
func (g *Gateway) mtlsOwner(self *jobState, host string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, o := range g.jobs {
		if o == self || o.cfg.Policy == nil {
			continue
		}
		for i := range o.cfg.Policy.Credentials {
			if c := &o.cfg.Policy.Credentials[i]; c.IsMTLS() && c.boundTo(host) {
				return id
			}
		}
	}
	return ""
}
