package netpolicy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/dns"

	"github.com/airlock-ci/airlock/secrets/mask"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestJobChosenNamesAreMasked: a job that asks for $SECRET.example.test
// (as typed, and upper-cased, which DNS folds) through DNS, the explicit
// proxy and CONNECT never puts the value in an event, the summary or the
// gateway's debug log.
func TestJobChosenNamesAreMasked(t *testing.T) {
	const secret = "Tr1ckyS3cretValue"
	m := mask.New(io.Discard, secret)
	logs := &syncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	tn := newTestNet()
	ev := &eventLog{}
	gw, err := NewGateway(GatewayConfig{Resolver: StaticResolver{}, Events: ev, Logger: log, Ports: &Ports{},
		PeekTimeout: 5 * time.Second, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	reg, err := gw.Register(context.Background(), JobConfig{JobID: "job-m", GatewayIP: tn.gateway, JobIP: tn.job,
		Policy: &Policy{Allow: mustEntries(t, "api.allowed.test")}, Mask: m.MaskFold})
	if err != nil {
		t.Fatal(err)
	}
	g := &testGateway{net: tn, gw: gw, reg: reg, events: ev}
	names := []string{secret + ".example.test", strings.ToUpper(secret) + ".example.test"}
	for _, name := range names {
		q := new(dns.Msg)
		q.SetQuestion(name+".", dns.TypeA)
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second, Dialer: dialer(tn.job)}
		if _, _, err := c.Exchange(q, reg.Addrs().DNS.String()); err != nil {
			t.Fatalf("DNS %s: %v", name, err)
		}
		resp, err := g.proxyClient(nil).Get("http://" + name + "/p/" + secret)
		if err != nil {
			t.Fatalf("GET via proxy: %v", err)
		}
		readBody(t, resp)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET http://%s/ = %d, want 403", name, resp.StatusCode)
		}
		if _, status := g.connect(t, name+":443"); status != http.StatusForbidden {
			t.Errorf("CONNECT %s = %d, want 403", name, status)
		}
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	evs := ev.all()
	if len(evs) < 6 {
		t.Fatalf("got %d events, want at least 6: %+v", len(evs), evs)
	}
	texts := map[string]string{
		"events":  fmt.Sprintf("%+v", evs),
		"summary": reg.Summary().String(),
		"log":     logs.String(),
	}
	if !strings.Contains(texts["log"], "egress denied") {
		t.Fatalf("the debug log has no denials; the test shows nothing:\n%s", texts["log"])
	}
	for where, text := range texts {
		for _, v := range []string{secret, strings.ToLower(secret), strings.ToUpper(secret)} {
			if strings.Contains(text, v) {
				t.Errorf("secret (%s) in the %s:\n%s", v[:4], where, text)
			}
		}
		if !strings.Contains(text, "[MASKED]") {
			t.Errorf("the %s shows no [MASKED]:\n%s", where, text)
		}
	}
}
