package netpolicy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Entry is one egress allowlist entry. Exactly one of the forms is set:
//
//	host            Host="host", Port=0 (ports 80 and 443)
//	host:port       Host="host", Port=port
//	*.suffix[:port] Host="suffix", Wildcard=true (subdomains only, not the bare suffix)
//	cidr:port       Prefix set, Port=port (admin ceilings only)
type Entry struct {
	Host     string
	Wildcard bool
	Port     int
	Prefix   netip.Prefix
}

// IsCIDR reports whether e is an address-range entry.
func (e Entry) IsCIDR() bool { return e.Prefix.IsValid() }

// String renders e in the form ParseEntry accepts.
func (e Entry) String() string {
	if e.IsCIDR() {
		return e.Prefix.String() + ":" + strconv.Itoa(e.Port)
	}
	s := e.Host
	if e.Wildcard {
		s = "*." + s
	}
	if e.Port != 0 {
		s += ":" + strconv.Itoa(e.Port)
	}
	return s
}

// ParseEntry parses one egress entry (see Entry for the forms).
func ParseEntry(s string) (Entry, error) {
	raw := s
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return Entry{}, errors.New("parsing egress entry: empty entry")
	}
	if strings.Contains(s, "/") {
		return parseCIDREntry(raw, s)
	}
	if strings.HasPrefix(s, "[") || strings.Count(s, ":") > 1 {
		return Entry{}, fmt.Errorf("parsing egress entry %q: IPv6 literals are not allowed; use a CIDR entry such as fd00::1/128:443", raw)
	}
	host, port := s, 0
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host = s[:i]
		p, err := parsePort(s[i+1:])
		if err != nil {
			return Entry{}, fmt.Errorf("parsing egress entry %q: %w", raw, err)
		}
		port = p
	}
	host = strings.TrimSuffix(host, ".")
	if _, err := netip.ParseAddr(host); err == nil {
		return Entry{}, fmt.Errorf("parsing egress entry %q: IP literals are not allowed; use a CIDR entry such as %s/32:443", raw, host)
	}
	e := Entry{Host: host, Port: port}
	if strings.HasPrefix(host, "*") {
		if !strings.HasPrefix(host, "*.") {
			return Entry{}, fmt.Errorf("parsing egress entry %q: a wildcard must be a whole leftmost label (*.example.com)", raw)
		}
		e.Host, e.Wildcard = host[2:], true
	}
	if err := checkHostname(e.Host); err != nil {
		return Entry{}, fmt.Errorf("parsing egress entry %q: %w", raw, err)
	}
	return e, nil
}

func parseCIDREntry(raw, s string) (Entry, error) {
	slash := strings.IndexByte(s, '/')
	i := strings.LastIndexByte(s, ':')
	if i < slash {
		return Entry{}, fmt.Errorf("parsing egress entry %q: a CIDR entry needs a port (10.0.0.0/24:5432)", raw)
	}
	port, err := parsePort(s[i+1:])
	if err != nil {
		return Entry{}, fmt.Errorf("parsing egress entry %q: %w", raw, err)
	}
	p, err := netip.ParsePrefix(s[:i])
	if err != nil {
		return Entry{}, fmt.Errorf("parsing egress entry %q: invalid CIDR: %w", raw, err)
	}
	if p != p.Masked() {
		return Entry{}, fmt.Errorf("parsing egress entry %q: CIDR has host bits set (did you mean %s?)", raw, p.Masked())
	}
	if p.Addr().Is4In6() {
		return Entry{}, fmt.Errorf("parsing egress entry %q: IPv4-mapped IPv6 prefixes are not allowed", raw)
	}
	return Entry{Prefix: p, Port: port}, nil
}

func parsePort(s string) (int, error) {
	if s == "" {
		return 0, errors.New("empty port")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("invalid port %q", s)
		}
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %q out of range 1-65535", s)
	}
	return p, nil
}

func checkHostname(h string) error {
	if h == "" {
		return errors.New("empty host name")
	}
	if len(h) > 253 {
		return errors.New("host name longer than 253 characters")
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" {
			return errors.New("empty label in host name")
		}
		if len(l) > 63 {
			return fmt.Errorf("label %q longer than 63 characters", l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for _, c := range l {
			ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return fmt.Errorf("invalid character %q in host name", c)
			}
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" {
		return fmt.Errorf("host name %q looks like an IP address; use a CIDR entry", h)
	}
	return nil
}

// ParseEntries parses every entry and returns all problems at once.
func ParseEntries(ss []string) ([]Entry, error) {
	var (
		out  []Entry
		errs []error
	)
	for _, s := range ss {
		e, err := ParseEntry(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, e)
	}
	return out, errors.Join(errs...)
}

// normalizeHost lower-cases a host name and strips a trailing dot and a
// bracketed IPv6 literal's brackets.
func normalizeHost(h string) string {
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}

// matchName reports whether the name part of e matches host.
func (e Entry) matchName(host string) bool {
	if e.IsCIDR() {
		return false
	}
	if e.Wildcard {
		return strings.HasSuffix(host, "."+e.Host)
	}
	return host == e.Host
}

func (e Entry) matchPort(port int) bool {
	if e.Port == 0 {
		return port == 80 || port == 443
	}
	return port == e.Port
}

// covers reports whether the ceiling entry c permits everything d permits.
func (c Entry) covers(d Entry) bool {
	if c.IsCIDR() || d.IsCIDR() {
		if !c.IsCIDR() || !d.IsCIDR() {
			return false
		}
		return c.Port == d.Port && c.Prefix.Bits() <= d.Prefix.Bits() && c.Prefix.Contains(d.Prefix.Addr())
	}
	switch {
	case c.Port == 0 && d.Port != 0 && d.Port != 80 && d.Port != 443:
		return false
	case c.Port != 0 && c.Port != d.Port:
		return false
	}
	switch {
	case !c.Wildcard:
		return !d.Wildcard && c.Host == d.Host
	case d.Wildcard:
		return d.Host == c.Host || strings.HasSuffix(d.Host, "."+c.Host)
	default:
		return strings.HasSuffix(d.Host, "."+c.Host)
	}
}

// CeilingError lists the declared egress entries that the admin ceiling does
// not cover. Scope (for example "repo group/app") is optional and only used
// in the message; callers may set it after errors.As.
type CeilingError struct {
	Scope   string
	Denied  []Entry
	CIDRs   []Entry // declared CIDR entries (admin-only)
	Ceiling []Entry
}

func (e *CeilingError) Error() string {
	var parts []string
	scope := ""
	if e.Scope != "" {
		scope = " for " + e.Scope
	}
	if len(e.Denied) > 0 {
		verb := "is"
		if len(e.Denied) > 1 {
			verb = "are"
		}
		allowed := joinEntries(e.Ceiling)
		if allowed == "" {
			allowed = "nothing"
		}
		parts = append(parts, fmt.Sprintf("egress %s %s not allowed by the ceiling%s (allowed: %s)",
			quoteEntries(e.Denied), verb, scope, allowed))
	}
	if len(e.CIDRs) > 0 {
		parts = append(parts, fmt.Sprintf("egress %s: CIDR entries may only be set by the admin ceiling%s",
			quoteEntries(e.CIDRs), scope))
	}
	return strings.Join(parts, "; ")
}

func quoteEntries(es []Entry) string {
	q := make([]string, len(es))
	for i, e := range es {
		q[i] = strconv.Quote(e.String())
	}
	return strings.Join(q, ", ")
}

func joinEntries(es []Entry) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.String()
	}
	return strings.Join(s, ", ")
}

// Intersect returns the effective egress: the job's declared entries, each of
// which must be covered by an entry of the admin ceiling. Declared CIDR
// entries are refused (the admin names addresses, jobs name hosts). On any
// refusal it returns a *CeilingError naming every offending entry and the
// ceiling, and no entries.
func Intersect(declared, ceiling []Entry) ([]Entry, error) {
	ce := &CeilingError{Ceiling: ceiling}
	out := make([]Entry, 0, len(declared))
	for _, d := range declared {
		if d.IsCIDR() {
			ce.CIDRs = append(ce.CIDRs, d)
			continue
		}
		ok := false
		for _, c := range ceiling {
			if c.covers(d) {
				ok = true
				break
			}
		}
		if !ok {
			ce.Denied = append(ce.Denied, d)
			continue
		}
		out = append(out, d)
	}
	if len(ce.Denied) > 0 || len(ce.CIDRs) > 0 {
		return nil, ce
	}
	return out, nil
}

// Policy is the effective egress policy of one job.
type Policy struct {
	// Allow is the allowlist. CIDR entries come from the admin only.
	Allow []Entry
	// Audit allows every host name on any port (still through the gateway,
	// still subject to the dial guard) and records everything.
	Audit bool
	// Credentials are the surrogate-delivered credentials bound to hosts.
	Credentials []Credential
}

// Allows reports whether the policy lets the job connect to host:port. An IP
// literal is only allowed by a CIDR entry (see AllowsAddr), also in audit mode.
func (p *Policy) Allows(host string, port int) bool {
	if p == nil {
		return false
	}
	host = normalizeHost(host)
	if a, err := netip.ParseAddr(host); err == nil {
		return p.AllowsAddr(a, port)
	}
	if p.Audit {
		return port > 0 && port < 65536
	}
	for _, e := range p.Allow {
		if e.matchName(host) && e.matchPort(port) {
			return true
		}
	}
	return false
}

// AllowsName reports whether any entry allows host on some port (the DNS view).
func (p *Policy) AllowsName(host string) bool {
	if p == nil {
		return false
	}
	host = normalizeHost(host)
	if _, err := netip.ParseAddr(host); err == nil {
		return false
	}
	if p.Audit {
		return checkHostname(host) == nil
	}
	for _, e := range p.Allow {
		if e.matchName(host) {
			return true
		}
	}
	return false
}

// AllowsAddr reports whether a CIDR entry names ip and port explicitly.
func (p *Policy) AllowsAddr(ip netip.Addr, port int) bool {
	if p == nil {
		return false
	}
	ip = ip.Unmap()
	for _, e := range p.Allow {
		if e.IsCIDR() && e.Port == port && e.Prefix.Contains(ip) {
			return true
		}
	}
	return false
}
