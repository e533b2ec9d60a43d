package netpolicy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ResolveEgressSource turns [gateway] egress_source into the address the
// gateway binds its upstream connections to: an address of this host, or
// the name of an interface (its first IPv4 address, else its first global
// IPv6 one). "" returns the zero Addr (the host's routing chooses).
func ResolveEgressSource(spec string) (netip.Addr, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return netip.Addr{}, nil
	}
	if a, err := netip.ParseAddr(spec); err == nil {
		a = a.Unmap()
		addrs, err := interfaceAddrs()
		if err != nil {
			return netip.Addr{}, fmt.Errorf("gateway.egress_source %s: %w", spec, err)
		}
		for _, h := range addrs {
			if h == a {
				return a, nil
			}
		}
		return netip.Addr{}, fmt.Errorf("gateway.egress_source %s: not an address of this host (ip addr shows them)", spec)
	}
	ifc, err := net.InterfaceByName(spec)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("gateway.egress_source %q: neither an address nor an interface of this host: %w", spec, err)
	}
	as, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("gateway.egress_source %q: listing its addresses: %w", spec, err)
	}
	var v6 netip.Addr
	for _, a := range as {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() {
			return ip, nil
		}
		if !v6.IsValid() && ip.IsGlobalUnicast() {
			v6 = ip
		}
	}
	if v6.IsValid() {
		return v6, nil
	}
	return netip.Addr{}, fmt.Errorf("gateway.egress_source %q: the interface has no usable address", spec)
}

// EgressAddrs describes where the gateway's upstream connections leave
// from, for `airlock doctor`: the configured source, or the host's
// candidate addresses (global unicast) when the routing chooses.
func EgressAddrs(spec string) (string, error) {
	src, err := ResolveEgressSource(spec)
	if err != nil {
		return "", err
	}
	if src.IsValid() {
		return fmt.Sprintf("upstream connections leave from %s (gateway.egress_source %s)", src, spec), nil
	}
	addrs, err := interfaceAddrs()
	if err != nil {
		return "", err
	}
	var out []string
	for _, a := range addrs {
		if a.IsGlobalUnicast() {
			out = append(out, a.String())
		}
	}
	return fmt.Sprintf("upstream connections leave from the address the host's routing picks, one of: %s (set gateway.egress_source to pin one)", strings.Join(out, ", ")), nil
}
