package audit_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
)

// syslogCollector is a loopback RFC 5425 receiver (TLS, octet counting).
type syslogCollector struct {
	ln     net.Listener
	caFile string
	mu     sync.Mutex
	msgs   []string
}

func newSyslogCollector(t *testing.T) *syslogCollector {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "syslog test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	c := &syslogCollector{ln: ln, caFile: caFile}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go c.serve(conn)
		}
	}()
	return c
}

func (c *syslogCollector) serve(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	for {
		n, err := r.ReadString(' ')
		if err != nil {
			return
		}
		size, err := strconv.Atoi(strings.TrimSuffix(n, " "))
		if err != nil {
			return
		}
		buf := make([]byte, size)
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		c.mu.Lock()
		c.msgs = append(c.msgs, string(buf))
		c.mu.Unlock()
	}
}

func (c *syslogCollector) messages() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

func TestSyslogSinkSendsRFC5424OverTLS(t *testing.T) {
	col := newSyslogCollector(t)
	s, err := audit.NewSyslogSink(col.ln.Addr().String(), col.caFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	lines := [][]byte{
		[]byte(`{"seq":1,"time":"2026-12-01T10:00:00Z","job":"j\"1]","type":"job_accepted","hash":"ab"}`),
		[]byte(`{"seq":2,"time":"2026-12-01T10:00:01Z","job":"j\"1]","type":"alert","hash":"cd"}`),
	}
	if err := s.Deliver(context.Background(), audit.Batch{Job: `j"1]`, FirstSeq: 1, LastSeq: 2, Lines: lines}); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(col.messages()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	msgs := col.messages()
	if len(msgs) != 2 {
		t.Fatalf("collector got %d messages, want 2", len(msgs))
	}
	for i, want := range []struct{ pri, msgid string }{{"<86>1 ", "job_accepted"}, {"<84>1 ", "alert"}} {
		m := msgs[i]
		f := strings.SplitN(m, " ", 7)
		if !strings.HasPrefix(m, want.pri) || len(f) < 7 || f[1] != fmt.Sprintf("2026-12-01T10:00:0%d.000000Z", i) || f[3] != "airlock" || f[5] != want.msgid {
			t.Errorf("message %d header = %q, want PRI %s, the record's time, APP-NAME airlock, MSGID %s", i, m, want.pri, want.msgid)
		}
		sd := fmt.Sprintf(`[airlock@32473 job="j\"1\]" seq="%d"] `, i+1)
		if !strings.Contains(m, sd) {
			t.Errorf("message %d lacks structured data %s: %q", i, sd, m)
		}
		if !strings.HasSuffix(m, "] "+string(lines[i])) {
			t.Errorf("message %d does not end with the record as written: %q", i, m)
		}
	}
}

func TestSyslogSinkVerifiesTheCollector(t *testing.T) {
	col := newSyslogCollector(t)
	s, err := audit.NewSyslogSink(col.ln.Addr().String(), "", "", "") // system roots: the test CA is unknown
	if err != nil {
		t.Fatal(err)
	}
	err = s.Deliver(context.Background(), audit.Batch{Job: "j", FirstSeq: 1, LastSeq: 1, Lines: [][]byte{[]byte(`{"seq":1}`)}})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Deliver to an untrusted collector = %v, want a certificate error", err)
	}
	if len(col.messages()) != 0 {
		t.Errorf("an untrusted collector received records")
	}
}

func TestSyslogConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		c    audit.Config
		want string
	}{
		{audit.Config{SyslogAddr: "siem.example.test"}, "host:port"},
		{audit.Config{SyslogCAFile: "/x"}, "set without audit.syslog_addr"},
		{audit.Config{SyslogAddr: "siem.example.test:6514", SyslogCertFile: "/c"}, "set both or neither"},
	} {
		errs := tc.c.Validate()
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.c, errs, tc.want)
		}
	}
	if errs := (audit.Config{SyslogAddr: "siem.example.test:6514"}).Validate(); len(errs) != 0 {
		t.Errorf("Validate(valid syslog) = %v", errs)
	}
}
