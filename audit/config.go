package audit

import (
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
)

// Config is the [audit] section of /etc/airlock/config.toml.
type Config struct {
	// Dir receives a verbatim copy of every trail (default <state>/audit).
	Dir string `toml:"dir"`
	// HTTPURL, if set, receives every record by POST (https; http only to loopback).
	HTTPURL string `toml:"http_url"`
	// HTTPTokenSecret names the secret-store entry holding the bearer token.
	HTTPTokenSecret string `toml:"http_token_secret"`
	// HTTPCAFile is a PEM bundle that replaces the system roots for HTTPURL.
	HTTPCAFile string `toml:"http_ca_file"`
	// Stdout prints every record as one JSON line on stdout (journald).
	Stdout bool `toml:"stdout"`
	// SyslogAddr (host:port), if set, receives every record as RFC 5424
	// over TLS (see SyslogSink); the CA and client certificate are
	// optional.
	SyslogAddr     string `toml:"syslog_addr"`
	SyslogCAFile   string `toml:"syslog_ca_file"`
	SyslogCertFile string `toml:"syslog_cert_file"`
	SyslogKeyFile  string `toml:"syslog_key_file"`
}

// SpoolDir returns the spool directory under the state directory.
func SpoolDir(stateDir string) string { return filepath.Join(stateDir, "audit", "spool") }

// KeyPath returns the signing key's path under the state directory.
func KeyPath(stateDir string) string { return filepath.Join(stateDir, KeyFile) }

// Validate reports every problem in the section, each naming its key.
func (c Config) Validate() []error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("audit.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Dir != "" && !filepath.IsAbs(c.Dir) {
		bad("dir", "%q is not an absolute path", c.Dir)
	}
	if c.HTTPURL != "" {
		u, err := url.Parse(c.HTTPURL)
		switch {
		case err != nil:
			bad("http_url", "not a URL: %v", err)
		case u.Host == "":
			bad("http_url", "%q has no host", c.HTTPURL)
		case u.User != nil:
			bad("http_url", "must not carry credentials; use http_token_secret")
		case u.Scheme == "https":
		case u.Scheme == "http" && isLoopback(u.Hostname()):
		case u.Scheme == "http":
			bad("http_url", "plain http is allowed only to a loopback address; use https")
		default:
			bad("http_url", "scheme %q is not https", u.Scheme)
		}
	} else {
		if c.HTTPTokenSecret != "" {
			bad("http_token_secret", "set without audit.http_url")
		}
		if c.HTTPCAFile != "" {
			bad("http_ca_file", "set without audit.http_url")
		}
	}
	if c.HTTPCAFile != "" {
		if pem, err := os.ReadFile(c.HTTPCAFile); err != nil {
			bad("http_ca_file", "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			bad("http_ca_file", "%s holds no PEM certificate", c.HTTPCAFile)
		}
	}
	errs = append(errs, c.validateSyslog()...)
	return errs
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Sinks builds the configured sinks: always the directory sink, plus the
// HTTP sink when HTTPURL is set (httpToken is the value of the
// HTTPTokenSecret the caller looked up) and the stdout sink writing to
// stdout when Stdout is set.
func (c Config) Sinks(stateDir, httpToken string, stdout io.Writer) ([]Sink, error) {
	dir := c.Dir
	if dir == "" {
		dir = filepath.Join(stateDir, "audit")
	}
	sinks := []Sink{NewDirSink(dir)}
	if c.HTTPURL != "" {
		h, err := NewHTTPSink(c.HTTPURL, httpToken, c.HTTPCAFile)
		if err != nil {
			return nil, fmt.Errorf("building audit http sink: %w", err)
		}
		sinks = append(sinks, h)
	}
	if c.Stdout {
		sinks = append(sinks, &StdoutSink{W: stdout})
	}
	if c.SyslogAddr != "" {
		s, err := NewSyslogSink(c.SyslogAddr, c.SyslogCAFile, c.SyslogCertFile, c.SyslogKeyFile)
		if err != nil {
			return nil, fmt.Errorf("building audit syslog sink: %w", err)
		}
		sinks = append(sinks, s)
	}
	return sinks, nil
}
