package netpolicy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/airlock-ci/airlock/audit"
)

// trailSink records each job's gateway events in a real, fsynced audit
// trail, the way the runner does (one LogBatch per batch).
type trailSink struct {
	mu     sync.Mutex
	trails map[string]*audit.Trail
}

func (s *trailSink) trail(job string) *audit.Trail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trails[job]
}

func auditEvent(e Event) audit.Event {
	switch e.Kind {
	case KindDNS:
		return audit.NewDNS(e.Host, e.Method, e.Verdict, e.Reason)
	case KindDropped:
		return audit.NewEventsDropped(e.Dropped, e.Reason)
	}
	return audit.NewEgress(e.Kind, e.Host, e.Port, e.Verdict, e.Reason, e.Bytes, e.Duration)
}

func (s *trailSink) Emit(e Event) {
	if _, err := s.trail(e.Job).Log(context.Background(), auditEvent(e)); err != nil {
		panic(err)
	}
}

func (s *trailSink) EmitBatch(evs []Event) {
	recs := make([]audit.Event, len(evs))
	for i, e := range evs {
		recs[i] = auditEvent(e)
	}
	if _, err := s.trail(evs[0].Job).LogBatch(context.Background(), recs); err != nil {
		panic(err)
	}
}

// trailCounts reads a spool file back: records per type, the dropped
// counts, and the hosts+paths of every http record.
type trailCounts struct {
	decisions int // records of gateway decisions
	dropped   int64
	http      map[string]bool // "verdict host path"
}

func readTrail(t *testing.T, path string) trailCounts {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := audit.ReadRecords(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("reading trail %s: %v", path, err)
	}
	c := trailCounts{http: map[string]bool{}}
	for _, r := range recs {
		switch r.Type {
		case audit.EventsDropped:
			c.dropped += r.Int(audit.FieldTotal)
		case audit.DNSAnswered, audit.DNSRefused, audit.EgressAllowed, audit.EgressDenied:
			c.decisions++
			if r.String(audit.FieldKind) == KindHTTP {
				c.http[r.String(audit.FieldVerdict)+" "+r.String(audit.FieldHost)] = true
			}
		}
	}
	return c
}

// TestFloodDoesNotCostOtherJobsTheirTrail: one job floods its gateway with
// tens of thousands of DNS questions while a quiet job beside it makes a
// few requests. Every decision of the quiet job is in its trail, the
// allowed and denied proxy requests the flooding job makes during the
// flood are in its trail, and for both jobs the summary agrees with the
// trail (records plus events_dropped counts).
func TestFloodDoesNotCostOtherJobsTheirTrail(t *testing.T) {
	key, err := audit.LoadOrCreateKey(filepath.Join(t.TempDir(), "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	sink := &trailSink{trails: map[string]*audit.Trail{}}
	flood, quiet := newTestNet(), newTestNet()
	up := startUpstream(t, flood.up1, 0, nil, "api.allowed.test")
	res := StaticResolver{"api.allowed.test": {flood.up1}}
	gw, err := NewGateway(GatewayConfig{
		Resolver: res, Events: sink, Ports: &Ports{},
		Guard:       GuardConfig{HostAddrs: func() ([]netip.Addr, error) { return nil, nil }},
		PeekTimeout: 5 * time.Second, DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	policy := &Policy{Allow: append(mustEntries(t, "api.allowed.test:"+strconv.Itoa(up.port)), mustEntries(t, cidrFor(flood.up1, up.port))...)}
	regs := map[string]*Registration{}
	for id, tn := range map[string]testNet{"flood": flood, "quiet": quiet} {
		tr, err := audit.Open(spool, "r1", id, key)
		if err != nil {
			t.Fatal(err)
		}
		sink.mu.Lock()
		sink.trails[id] = tr
		sink.mu.Unlock()
		reg, err := gw.Register(context.Background(), JobConfig{JobID: id, GatewayIP: tn.gateway, JobIP: tn.job, Policy: policy})
		if err != nil {
			t.Fatal(err)
		}
		regs[id] = reg
	}

	// The flood: 30,000 questions as fast as one socket sends them.
	const questions = 30000
	laddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(flood.job, 0))
	uc, err := net.DialUDP("udp4", laddr, net.UDPAddrFromAddrPort(regs["flood"].Addrs().DNS))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	answered := make(chan int, 1)
	go func() {
		n := 0
		buf := make([]byte, 512)
		for {
			_ = uc.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := uc.Read(buf); err != nil {
				answered <- n
				return
			}
			n++
		}
	}()
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		for i := range questions {
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("q%d.flood.test.", i), dns.TypeA)
			b, _ := m.Pack()
			if _, err := uc.Write(b); err != nil {
				return
			}
		}
	}()

	// During the flood: an allowed and a denied proxy request of the
	// flooding job, and the quiet job's requests.
	get := func(tn testNet, reg *Registration, host string) {
		c, err := dialer(tn.job).Dial("tcp4", reg.Addrs().Proxy.String())
		if err != nil {
			t.Errorf("dialing proxy: %v", err)
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "GET http://%s:%d/ HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", host, up.port, host, up.port)
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Errorf("GET %s: %v", host, err)
			return
		}
		resp.Body.Close()
	}
	get(flood, regs["flood"], "api.allowed.test")
	get(flood, regs["flood"], "forbidden.test")
	const quietRequests = 20
	for i := range quietRequests {
		host := "api.allowed.test"
		if i%2 == 1 {
			host = "forbidden.test"
		}
		get(quiet, regs["quiet"], host)
	}
	<-floodDone
	n := <-answered
	t.Logf("flood: %d questions sent, %d answered", questions, n)

	for id, reg := range regs {
		if err := reg.Close(); err != nil {
			t.Fatal(err)
		}
		if err := sink.trail(id).Close(); err != nil {
			t.Fatal(err)
		}
		sum := reg.Summary()
		got := readTrail(t, audit.SpoolPath(spool, id))
		t.Logf("%s: summary %d allowed + %d denied (%d dropped); trail %d decisions + %d dropped",
			id, sum.Allowed, sum.Denied, sum.Dropped, got.decisions, got.dropped)
		if int64(got.decisions)+got.dropped != int64(sum.Allowed+sum.Denied) {
			t.Errorf("%s: trail has %d decisions + %d dropped, summary counts %d", id, got.decisions, got.dropped, sum.Allowed+sum.Denied)
		}
		if got.dropped != sum.Dropped {
			t.Errorf("%s: trail says %d dropped, summary %d", id, got.dropped, sum.Dropped)
		}
		for _, want := range []string{"allowed api.allowed.test", "denied forbidden.test"} {
			if !got.http[want] {
				t.Errorf("%s: no %q http record in the trail", id, want)
			}
		}
	}
	if q := readTrail(t, audit.SpoolPath(spool, "quiet")); q.decisions != quietRequests || q.dropped != 0 {
		t.Errorf("quiet job: %d decisions and %d dropped in its trail, want %d and 0", q.decisions, q.dropped, quietRequests)
	}
	if f := regs["flood"].Summary(); f.Allowed+f.Denied < 3000 {
		t.Errorf("flood job: only %d decisions; the flood did not reach the gateway", f.Allowed+f.Denied)
	}
}

// blockingSink holds every batch until released, counting what it got.
type blockingSink struct {
	release chan struct{}
	mu      sync.Mutex
	evs     []Event
}

func (s *blockingSink) Emit(ev Event) { s.EmitBatch([]Event{ev}) }

func (s *blockingSink) EmitBatch(evs []Event) {
	<-s.release
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, evs...)
}

// TestEventsDroppedAreCounted: when a job's queue stays full beyond the
// wait (a sink that does not keep up at all), the gateway drops that
// job's events but reports them to the sink as one events_dropped event
// with counts per kind, and the summary says so: received + dropped =
// decided.
func TestEventsDroppedAreCounted(t *testing.T) {
	tn := newTestNet()
	sink := &blockingSink{release: make(chan struct{})}
	gw, err := NewGateway(GatewayConfig{Resolver: StaticResolver{}, Events: sink, Ports: &Ports{},
		EventBuffer: 4, EventWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	reg, err := gw.Register(context.Background(), JobConfig{JobID: "job-d", GatewayIP: tn.gateway, JobIP: tn.job, Policy: &Policy{}})
	if err != nil {
		t.Fatal(err)
	}
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second, Dialer: dialer(tn.job)}
	conn, err := c.Dial(reg.Addrs().DNS.String())
	if err != nil {
		t.Fatal(err)
	}
	const questions = 50
	for i := range questions {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("d%d.test.", i), dns.TypeA)
		if _, _, err := c.ExchangeWithConn(m, conn); err != nil {
			t.Fatalf("question %d: %v", i, err)
		}
	}
	conn.Close()
	close(sink.release)
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	sum := reg.Summary()
	var got, dropped int64
	for _, ev := range sink.evs {
		if ev.Kind == KindDropped {
			for _, n := range ev.Dropped {
				dropped += n
			}
			if ev.Dropped[KindDNS] == 0 {
				t.Errorf("events_dropped without a dns count: %+v", ev.Dropped)
			}
			continue
		}
		got++
	}
	if sum.Denied != questions || sum.Dropped == 0 || dropped != sum.Dropped || got+dropped != questions {
		t.Errorf("summary %d denied, %d dropped; sink got %d events and %d dropped: want %d = received + dropped, dropped > 0",
			sum.Denied, sum.Dropped, got, dropped, questions)
	}
	if gw.DroppedEvents() != sum.Dropped {
		t.Errorf("gateway counts %d dropped, summary %d", gw.DroppedEvents(), sum.Dropped)
	}
	if !strings.Contains(sum.String(), "events_dropped") {
		t.Errorf("summary text does not mention the dropped records: %s", sum)
	}
}

// A job that records few events costs few: registering does not make its
// event queue's full buffer (8192 events, 2 MB, made under the gateway's
// lock that every other job's registration waits for).
func TestRegisterAllocatesNoEventBuffer(t *testing.T) {
	gw, err := NewGateway(GatewayConfig{Resolver: StaticResolver{}, Events: EventSinkFunc(func(Event) {}), Ports: &Ports{}})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	tn := newTestNet()
	cycle := func() {
		reg, err := gw.Register(context.Background(), JobConfig{JobID: "job-alloc", GatewayIP: tn.gateway, JobIP: tn.job, Policy: &Policy{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.Close(); err != nil {
			t.Fatal(err)
		}
	}
	cycle() // first-use allocations of the gateway and the runtime
	const rounds = 5
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range rounds {
		cycle()
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / rounds; per > 256<<10 {
		t.Errorf("a job's registration and unregistration allocate %d KiB, want under 256 KiB", per>>10)
	}
}
