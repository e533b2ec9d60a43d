package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Resolver resolves a host name to addresses for the gateway's own dials.
// It is called concurrently. An error or an empty result fails the dial.
type Resolver interface {
	LookupIP(ctx context.Context, host string) ([]netip.Addr, error)
}

// SystemResolver resolves through a net.Resolver (the host's resolver when
// Resolver is nil).
type SystemResolver struct {
	Resolver *net.Resolver
}

// LookupIP implements Resolver.
func (r SystemResolver) LookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	res := r.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	addrs, err := res.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", host, err)
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	return addrs, nil
}

// StaticResolver maps names to addresses. A key "*.suffix" answers every
// subdomain of suffix that has no exact key. Names are matched lower-case
// without a trailing dot.
type StaticResolver map[string][]netip.Addr

// LookupIP implements Resolver.
func (r StaticResolver) LookupIP(_ context.Context, host string) ([]netip.Addr, error) {
	if a, ok := lookupName(r, host); ok && len(a) > 0 {
		return a, nil
	}
	return nil, fmt.Errorf("resolving %s: %w", host, &net.DNSError{Err: "no such host", Name: normalizeHost(host), IsNotFound: true})
}

// lookupName finds host in a static map: its exact key first, then the
// nearest "*.suffix" key above it.
func lookupName[V any](m map[string]V, host string) (V, bool) {
	host = normalizeHost(host)
	if v, ok := m[host]; ok {
		return v, true
	}
	for name := host; ; {
		i := strings.IndexByte(name, '.')
		if i < 0 {
			var zero V
			return zero, false
		}
		name = name[i+1:]
		if v, ok := m["*."+name]; ok {
			return v, true
		}
	}
}

// HostsResolver consults a static hosts map (config.toml [gateway.hosts],
// e.g. "db.internal" = "10.1.2.3", or "*.corp.internal" for every
// subdomain) before falling back to Next.
type HostsResolver struct {
	Hosts map[string]netip.Addr
	Next  Resolver
}

// LookupIP implements Resolver.
func (r HostsResolver) LookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, ok := lookupName(r.Hosts, host); ok {
		return []netip.Addr{a}, nil
	}
	if r.Next == nil {
		return nil, fmt.Errorf("resolving %s: %w", host, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true})
	}
	return r.Next.LookupIP(ctx, host)
}

// AdminAddr implements AdminResolver: the hosts table's address for host.
func (r HostsResolver) AdminAddr(host string) (netip.Addr, bool) {
	return lookupName(r.Hosts, host)
}

// AdminResolver is implemented by resolvers some of whose answers are an
// admin's explicit choice (a [gateway.hosts] entry): the dial guard lets
// the gateway dial such an address even in a private range.
type AdminResolver interface {
	AdminAddr(host string) (netip.Addr, bool)
}

// ParseHosts turns a config hosts table (config.toml [gateway.hosts],
// name = "address") into the HostsResolver map, reporting every bad line.
func ParseHosts(m map[string]string) (map[string]netip.Addr, error) {
	out := make(map[string]netip.Addr, len(m))
	var errs []error
	for name, addr := range m {
		n := normalizeHost(name)
		if err := checkHostname(strings.TrimPrefix(n, "*.")); err != nil {
			errs = append(errs, fmt.Errorf("parsing gateway host %q: %w", name, err))
			continue
		}
		a, err := netip.ParseAddr(addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("parsing gateway host %q: %w", name, err))
			continue
		}
		out[n] = a.Unmap()
	}
	return out, errors.Join(errs...)
}
