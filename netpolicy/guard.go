package netpolicy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"
)

// GuardConfig configures the dial guard.
type GuardConfig struct {
	// JobPool is the job address pool (default 10.213.0.0/16, already
	// covered by RFC1918 but listed so a non-private pool is denied too).
	JobPool []netip.Prefix
	// Deny adds ranges that are never dialed.
	Deny []netip.Prefix
	// HostAddrs returns the host's own interface addresses; nil uses
	// net.InterfaceAddrs. The result is cached for HostAddrsTTL (default 30s).
	HostAddrs    func() ([]netip.Addr, error)
	HostAddrsTTL time.Duration
}

// deniedRanges are never dialed unless a policy CIDR entry names the address.
var deniedRanges = []struct {
	prefix netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified/this-network"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "CGNAT"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fc00::/7"), "private"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
}

// DialGuard decides whether the gateway may dial an address. It checks the
// address actually being connected (from net.Dialer.Control), so a name that
// resolves to a forbidden address (DNS rebinding) is refused too.
type DialGuard struct {
	cfg GuardConfig

	mu        sync.Mutex
	hostAddrs map[netip.Addr]bool
	fetched   time.Time
}

// NewDialGuard returns a guard for cfg.
func NewDialGuard(cfg GuardConfig) *DialGuard {
	if cfg.HostAddrs == nil {
		cfg.HostAddrs = interfaceAddrs
	}
	if cfg.HostAddrsTTL == 0 {
		cfg.HostAddrsTTL = 30 * time.Second
	}
	return &DialGuard{cfg: cfg}
}

func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("listing interface addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

func (g *DialGuard) isHostAddr(a netip.Addr) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hostAddrs == nil || time.Since(g.fetched) > g.cfg.HostAddrsTTL {
		as, err := g.cfg.HostAddrs()
		if err != nil {
			return false, err
		}
		g.hostAddrs = make(map[netip.Addr]bool, len(as))
		for _, h := range as {
			g.hostAddrs[h.Unmap()] = true
		}
		g.fetched = time.Now()
	}
	return g.hostAddrs[a], nil
}

// GuardError is a dial the guard refused. Its Rule says, for the job,
// which rule refused it, without naming the address (which may be an
// admin's internal one).
type GuardError struct {
	Addr  netip.AddrPort
	Range string // "loopback", "private", "link-local", ...
	Rule  string
}

func (e *GuardError) Error() string {
	return fmt.Sprintf("dial guard: %s is %s (%s)", e.Addr.Addr(), e.Range, e.Rule)
}

// what names the refused address's kind for the job ("a private address").
func (e *GuardError) what() string {
	switch {
	case strings.HasPrefix(e.Range, "in "):
		return "an address " + e.Range
	case strings.HasPrefix(e.Range, "an "):
		return e.Range
	}
	return "a " + e.Range + " address"
}

// Rules of GuardError.
const (
	RuleNeverDialed  = "never dialed"
	RulePrivate      = "private address not allowed by the admin: a [gateway.hosts] entry or a CIDR entry in the repository's egress ceiling allows one"
	RuleJobPool      = "never dialed"
	RuleDeniedRange  = "in a range the admin denies"
	RuleHostAddress  = "never dialed"
	ruleHostAddrFail = "the host's addresses could not be listed"
)

// adminRanges are the denied ranges an admin's explicit choice (a
// [gateway.hosts] address or a ceiling CIDR entry) may open; the others
// (loopback, link-local/metadata, multicast, ...) are never dialed.
var adminRanges = map[string]bool{"private": true, "CGNAT": true}

// Check returns nil if addr may be dialed under policy p, else a
// *GuardError saying why not. A policy CIDR entry naming the address and
// port, or admin (the address an admin's hosts entry gave the name being
// dialed), opens the private ranges; nothing opens loopback, link-local,
// the job pool or the host's own addresses except a CIDR entry naming them.
func (g *DialGuard) Check(addr netip.AddrPort, p *Policy) error {
	return g.check(addr, p, netip.Addr{})
}

func (g *DialGuard) check(addr netip.AddrPort, p *Policy, admin netip.Addr) error {
	ip := addr.Addr().Unmap()
	port := int(addr.Port())
	if !ip.IsValid() {
		return fmt.Errorf("dial guard: invalid address %s", addr)
	}
	if p.AllowsAddr(ip, port) {
		return nil
	}
	byAdmin := admin.IsValid() && admin.Unmap() == ip
	for _, d := range deniedRanges {
		if d.prefix.Contains(ip) {
			if byAdmin && adminRanges[d.reason] {
				break
			}
			rule := RuleNeverDialed
			if adminRanges[d.reason] {
				rule = RulePrivate
			}
			return &GuardError{Addr: addr, Range: d.reason, Rule: rule}
		}
	}
	for _, pre := range g.cfg.JobPool {
		if pre.Contains(ip) {
			return &GuardError{Addr: addr, Range: "in the job address pool", Rule: RuleJobPool}
		}
	}
	for _, pre := range g.cfg.Deny {
		if pre.Contains(ip) {
			return &GuardError{Addr: addr, Range: "in denied range " + pre.String(), Rule: RuleDeniedRange}
		}
	}
	host, err := g.isHostAddr(ip)
	if err != nil {
		return fmt.Errorf("dial guard: checking host addresses (%s): %w", ruleHostAddrFail, err)
	}
	if host {
		return &GuardError{Addr: addr, Range: "an address of this host", Rule: RuleHostAddress}
	}
	return nil
}

// Control returns a net.Dialer.Control function enforcing the guard for p.
func (g *DialGuard) Control(p *Policy) func(network, address string, c syscall.RawConn) error {
	return g.control(p, netip.Addr{})
}

func (g *DialGuard) control(p *Policy, admin netip.Addr) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("dial guard: parsing %s address %q: %w", network, address, err)
		}
		return g.check(ap, p, admin)
	}
}
