package testenv

import (
	"net"
	"strconv"
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
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatalf("listening for DNS on %s: %v", addr, err)
	}
	host, _, _ := net.SplitHostPort(addr)
	port := pc.LocalAddr().(*net.UDPAddr).Port
	ln, err := net.Listen("tcp4", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		pc.Close()
		t.Fatalf("listening for DNS over TCP on %s: %v", addr, err)
	}
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
