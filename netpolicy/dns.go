package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// The gateway's DNS server answers only names the job's policy allows and
// never forwards a query upstream (forwarding would be a tunnel).
//
// An allowed name's A record is the job's own gateway address, not the
// name's real address: the job's only route is the gateway and every TCP
// connection goes through the proxy anyway, so a client that ignores
// HTTP(S)_PROXY connects to gateway:80/443, the job namespace DNATs that to
// the transparent listeners, and the gateway resolves the real address
// itself (Host header / TLS SNI) through its own resolver and dial guard.
// The job therefore never learns, and never chooses, an upstream address.
//
// AAAA for an allowed name is an empty NOERROR (jobs have no IPv6); every
// name that is not allowed is NXDOMAIN; any other query type (TXT, NULL,
// ANY, MX, ...) is REFUSED, whatever the name; other opcodes are NOTIMP.

func (j *jobState) startDNS(pc net.PacketConn, ln net.Listener) error {
	h := dns.HandlerFunc(j.serveDNS)
	var errs []error
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: h},
		{Listener: ln, Handler: h},
	} {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
			}
		}()
		select {
		case <-started:
			j.mu.Lock()
			j.dnsServers = append(j.dnsServers, srv)
			j.mu.Unlock()
		case err := <-failed:
			errs = append(errs, fmt.Errorf("starting DNS server: %w", err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(append(errs, ignoreClosed(pc.Close()), ignoreClosed(ln.Close()))...)
	}
	return nil
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func remoteAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (j *jobState) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	if !j.enter() {
		return // the job has ended: no answer, nothing to record
	}
	defer j.wg.Done()
	if src := remoteAddr(w.RemoteAddr()); src != j.cfg.JobIP {
		// Dropped without an answer.
		j.emit(Event{Kind: KindDNS, Addr: src.String(), Verdict: VerdictDenied,
			Reason: "query from a source address that is not the job's"})
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true
	defer func() { _ = w.WriteMsg(m) }()

	if r.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeNotImplemented
		j.emit(Event{Kind: KindDNS, Verdict: VerdictDenied, Reason: "opcode " + dns.OpcodeToString[r.Opcode] + " not implemented"})
		return
	}
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		j.emit(Event{Kind: KindDNS, Verdict: VerdictDenied, Reason: fmt.Sprintf("%d questions in one query", len(r.Question))})
		return
	}
	q := r.Question[0]
	name := normalizeHost(q.Name)
	if len(name) > 253 {
		name = name[:253]
	}
	qtype := dns.TypeToString[q.Qtype]
	if qtype == "" {
		qtype = fmt.Sprintf("TYPE%d", q.Qtype)
	}
	ev := Event{Kind: KindDNS, Host: name, Method: qtype, Verdict: VerdictDenied}
	allowed := q.Qclass == dns.ClassINET && j.cfg.Policy.AllowsName(name)
	switch {
	case q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA:
		m.Rcode = dns.RcodeRefused
		ev.Reason = "query type " + qtype + " refused"
	case !allowed:
		m.Rcode = dns.RcodeNameError
		ev.Reason = "name not allowed"
	case q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET,
				Ttl: uint32(j.g.cfg.DNSTTL.Seconds())},
			A: j.cfg.GatewayIP.AsSlice(),
		})
		ev.Verdict, ev.Addr = VerdictAllowed, j.cfg.GatewayIP.String()
	default: // AAAA of an allowed name: no IPv6 in jobs
		ev.Verdict = VerdictAllowed
	}
	ev.Status = m.Rcode
	j.emit(ev)
}
