package testenv

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"

	"github.com/miekg/dns"
)

// ServeFakeDNS serves FakeHosts over UDP and TCP on addr ("IP:PORT"; port
// 0 picks one free for both) in the test's namespace and returns the
// address. A/AAAA answers come from LookupFake, unknown names get
// NXDOMAIN. It stops in t.Cleanup.
func ServeFakeDNS(t testing.TB, addr string) string {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 {
			question := q.Question[0]
			a, ok := LookupFake(question.Name)
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case question.Qtype == dns.TypeA && a.Is4():
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: a.AsSlice()})
			}
		}
		_ = w.WriteMsg(m)
	})
	pc, ln := listenDNS(t, addr)
	udp := &dns.Server{PacketConn: pc, Handler: handler}
	tcp := &dns.Server{Listener: ln, Handler: handler}
	started, done := make(chan struct{}, 2), make(chan struct{}, 2)
	udp.NotifyStartedFunc = func() { started <- struct{}{} }
	tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go func() { _ = udp.ActivateAndServe(); done <- struct{}{} }()
	go func() { _ = tcp.ActivateAndServe(); done <- struct{}{} }()
	<-started
	<-started // Shutdown before the servers started would not stop them
	t.Cleanup(func() {
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
		<-done
		<-done
	})
	return pc.LocalAddr().String()
}

// listenDNS listens on addr over UDP and TCP on one port. With port 0 a
// port free for UDP may be taken for TCP by another process: then it
// tries another, a few times.
func listenDNS(t testing.TB, addr string) (net.PacketConn, net.Listener) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	for try := 1; ; try++ {
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			t.Fatalf("listening for DNS on %s: %v", addr, err)
		}
		got := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp4", net.JoinHostPort(host, strconv.Itoa(got)))
		if err == nil {
			return pc, ln
		}
		pc.Close()
		if port != "0" || try == 20 || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("listening for DNS over TCP on %s: %v", addr, err)
		}
	}
}
