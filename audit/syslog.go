package audit

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Syslog facility and severities the sink uses: every record goes to
// authpriv (security/authorization messages), alerts as warning.
const (
	syslogFacilityAuthpriv = 10
	syslogSevWarning       = 4
	syslogSevInfo          = 6
	// syslogSDID is the structured-data id of the record's envelope;
	// 32473 is the private enterprise number reserved for examples
	// (RFC 5612), used until Airlock has its own.
	syslogSDID = "airlock@32473"
)

// SyslogSink sends every record to a syslog collector (a SIEM's usual
// intake) as RFC 5424 messages over TLS, octet-counted as RFC 5425 says:
// APP-NAME airlock, MSGID the record type, structured data naming the
// job and seq, MSG the record's JSON line as it is in the trail (so the
// collector can verify the chain). One connection is kept and redialled
// after a failure; delivery is at least once (a batch cut by a broken
// connection is sent again whole). TLS verification is always on.
type SyslogSink struct {
	addr     string
	hostname string
	tls      *tls.Config
	timeout  time.Duration

	mu   sync.Mutex
	conn *tls.Conn
	w    *bufio.Writer
}

// NewSyslogSink builds the sink for addr (host:port). caFile, if set,
// replaces the system roots; certFile and keyFile, if set, are the
// client certificate (mutual TLS).
func NewSyslogSink(addr, caFile, certFile, keyFile string) (*SyslogSink, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("audit syslog address %q: %w", addr, err)
	}
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading audit syslog CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reading audit syslog CA file %s: no PEM certificates", caFile)
		}
		cfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("loading the audit syslog client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	hn, err := os.Hostname()
	if err != nil || hn == "" {
		hn = "-"
	}
	return &SyslogSink{addr: addr, hostname: hn, tls: cfg, timeout: 10 * time.Second}, nil
}

// Name implements Sink.
func (s *SyslogSink) Name() string { return "syslog" }

// Deliver implements Sink: one message per record, flushed before it
// returns.
func (s *SyslogSink) Deliver(ctx context.Context, b Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: s.timeout}, Config: s.tls}
		c, err := d.DialContext(ctx, "tcp", s.addr)
		if err != nil {
			return fmt.Errorf("connecting to the audit syslog collector %s: %w", s.addr, err)
		}
		s.conn, s.w = c.(*tls.Conn), bufio.NewWriter(c)
	}
	deadline := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = s.conn.SetWriteDeadline(deadline)
	for _, line := range b.Lines {
		msg := s.format(b.Job, line)
		if _, err := fmt.Fprintf(s.w, "%d %s", len(msg), msg); err != nil {
			return s.broken(err)
		}
	}
	if err := s.w.Flush(); err != nil {
		return s.broken(err)
	}
	return nil
}

func (s *SyslogSink) broken(err error) error {
	_ = s.conn.Close()
	s.conn, s.w = nil, nil
	return fmt.Errorf("sending audit records to syslog %s: %w", s.addr, err)
}

// format renders one record as an RFC 5424 message.
func (s *SyslogSink) format(job string, line []byte) []byte {
	var env struct {
		Seq  int64     `json:"seq"`
		Time time.Time `json:"time"`
		Type EventType `json:"type"`
	}
	_ = json.Unmarshal(line, &env) // a record that does not decode still goes out, as MSG
	sev := syslogSevInfo
	if env.Type == Alert {
		sev = syslogSevWarning
	}
	ts := "-"
	if !env.Time.IsZero() {
		ts = env.Time.UTC().Format("2006-01-02T15:04:05.000000Z07:00")
	}
	msgID := sdName(string(env.Type), 32)
	var b strings.Builder
	fmt.Fprintf(&b, "<%d>1 %s %s airlock %d %s [%s job=\"%s\" seq=\"%s\"] ",
		syslogFacilityAuthpriv*8+sev, ts, sdName(s.hostname, 255), os.Getpid(), msgID,
		syslogSDID, sdValue(job), strconv.FormatInt(env.Seq, 10))
	b.Write(line)
	return []byte(b.String())
}

// sdName keeps a header field to printable US-ASCII without spaces.
func sdName(s string, max int) string {
	if s == "" {
		return "-"
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(out) < max; i++ {
		if c := s[i]; c > 32 && c < 127 {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return string(out)
}

// sdValue escapes a structured-data parameter value (RFC 5424 6.3.3).
func sdValue(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, `]`, `\]`).Replace(s)
}

// Close closes the connection.
func (s *SyslogSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn, s.w = nil, nil
	return err
}

func (c Config) validateSyslog() []error {
	var errs []error
	if c.SyslogAddr == "" {
		for k, v := range map[string]string{"syslog_ca_file": c.SyslogCAFile, "syslog_cert_file": c.SyslogCertFile, "syslog_key_file": c.SyslogKeyFile} {
			if v != "" {
				errs = append(errs, fmt.Errorf("audit.%s: set without audit.syslog_addr", k))
			}
		}
		return errs
	}
	if _, port, err := net.SplitHostPort(c.SyslogAddr); err != nil || port == "" {
		errs = append(errs, fmt.Errorf("audit.syslog_addr %q: must be host:port (TLS, usually port 6514)", c.SyslogAddr))
	}
	if (c.SyslogCertFile == "") != (c.SyslogKeyFile == "") {
		errs = append(errs, fmt.Errorf("audit.syslog_cert_file and audit.syslog_key_file: set both or neither"))
	}
	return errs
}
