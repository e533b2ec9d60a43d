package netpolicy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// hostRules4 renders the authoritative host-side IPv4 rule set of a job for
// `iptables-restore --noflush`. The chain declaration flushes the per-job
// chain, so re-applying rewrites it; the INPUT jump and the FORWARD drop are
// only inserted when withJumps is set (they are checked for first).
func hostRules4(s FirewallSpec, withJumps bool) string {
	chain := ChainName(s.RunnerID, s.JobID)
	c := commentArg(s)
	var b strings.Builder
	b.WriteString("*filter\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", chain)
	for _, p := range s.tcpPorts() {
		fmt.Fprintf(&b, "-A %s -s %s/32 -d %s/32 -p tcp -m tcp --dport %d %s -j ACCEPT\n", chain, s.JobIP, s.GatewayIP, p, c)
	}
	for _, p := range sortedPorts(s.UDPPorts) {
		fmt.Fprintf(&b, "-A %s -s %s/32 -d %s/32 -p udp -m udp --dport %d %s -j ACCEPT\n", chain, s.JobIP, s.GatewayIP, p, c)
	}
	fmt.Fprintf(&b, "-A %s -m conntrack --ctstate RELATED,ESTABLISHED %s -j ACCEPT\n", chain, c)
	fmt.Fprintf(&b, "-A %s %s -j DROP\n", chain, c)
	if withJumps {
		fmt.Fprintf(&b, "-I INPUT 1 %s\n", strings.Join(quoteArgs(inputJump4(s)), " "))
		fmt.Fprintf(&b, "-I FORWARD 1 %s\n", strings.Join(quoteArgs(forwardDrop(s)), " "))
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// hostRules6 renders the host-side IPv6 rules: everything from the job's
// veth is dropped.
func hostRules6(s FirewallSpec) string {
	var b strings.Builder
	b.WriteString("*filter\n")
	fmt.Fprintf(&b, "-I INPUT 1 %s\n", strings.Join(quoteArgs(inputDrop6(s)), " "))
	fmt.Fprintf(&b, "-I FORWARD 1 %s\n", strings.Join(quoteArgs(forwardDrop(s)), " "))
	b.WriteString("COMMIT\n")
	return b.String()
}

// removalRules4 deletes exactly what hostRules4 with jumps installed.
func removalRules4(s FirewallSpec) string {
	chain := ChainName(s.RunnerID, s.JobID)
	return "*filter\n" +
		"-D INPUT " + strings.Join(quoteArgs(inputJump4(s)), " ") + "\n" +
		"-D FORWARD " + strings.Join(quoteArgs(forwardDrop(s)), " ") + "\n" +
		":" + chain + " - [0:0]\n-X " + chain + "\nCOMMIT\n"
}

// removalRules6 deletes exactly what hostRules6 installed.
func removalRules6(s FirewallSpec) string {
	return "*filter\n" +
		"-D INPUT " + strings.Join(quoteArgs(inputDrop6(s)), " ") + "\n" +
		"-D FORWARD " + strings.Join(quoteArgs(forwardDrop(s)), " ") + "\nCOMMIT\n"
}

// inputJump4 is the rulespec of the INPUT jump into the per-job chain.
func inputJump4(s FirewallSpec) []string {
	return []string{"-i", s.HostIf, "-m", "comment", "--comment", RuleComment(s.RunnerID, s.JobID), "-j", ChainName(s.RunnerID, s.JobID)}
}

// inputDrop6 is the rulespec of the IPv6 INPUT drop.
func inputDrop6(s FirewallSpec) []string {
	return []string{"-i", s.HostIf, "-m", "comment", "--comment", RuleComment(s.RunnerID, s.JobID), "-j", "DROP"}
}

// forwardDrop is the rulespec of the FORWARD drop (IPv4 and IPv6).
func forwardDrop(s FirewallSpec) []string {
	return []string{"-i", s.HostIf, "-m", "comment", "--comment", RuleComment(s.RunnerID, s.JobID), "-j", "DROP"}
}

// nsRules4 renders the rule set applied inside the job's namespace (a full
// restore of the filter and nat tables: the namespace belongs to the job).
// These rules are defence in depth and make denied connections fail fast;
// the host-side rules are the authoritative ones.
func nsRules4(s FirewallSpec) string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\n")
	b.WriteString("-A INPUT -i lo -j ACCEPT\n")
	b.WriteString("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	b.WriteString("-A OUTPUT -o lo -j ACCEPT\n")
	for _, p := range s.tcpPorts() {
		fmt.Fprintf(&b, "-A OUTPUT -d %s/32 -p tcp -m tcp --dport %d -j ACCEPT\n", s.GatewayIP, p)
	}
	for _, p := range sortedPorts(s.UDPPorts) {
		fmt.Fprintf(&b, "-A OUTPUT -d %s/32 -p udp -m udp --dport %d -j ACCEPT\n", s.GatewayIP, p)
	}
	b.WriteString("-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset\n")
	b.WriteString("-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited\n")
	b.WriteString("COMMIT\n")
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	if s.TransparentHTTP != 0 {
		fmt.Fprintf(&b, "-A OUTPUT ! -o lo -p tcp -m tcp --dport 80 -j DNAT --to-destination %s:%d\n", s.GatewayIP, s.TransparentHTTP)
	}
	if s.TransparentTLS != 0 {
		fmt.Fprintf(&b, "-A OUTPUT ! -o lo -p tcp -m tcp --dport 443 -j DNAT --to-destination %s:%d\n", s.GatewayIP, s.TransparentTLS)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// nsRules6 drops all IPv6 inside the job's namespace except loopback.
func nsRules6() string {
	return "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\n" +
		"-A INPUT -i lo -j ACCEPT\n-A OUTPUT -o lo -j ACCEPT\nCOMMIT\n"
}

// tcpPorts returns the TCP gateway ports including the transparent proxy
// ports, sorted and without duplicates.
func (s FirewallSpec) tcpPorts() []uint16 {
	ports := slices.Clone(s.TCPPorts)
	if s.TransparentHTTP != 0 {
		ports = append(ports, s.TransparentHTTP)
	}
	if s.TransparentTLS != 0 {
		ports = append(ports, s.TransparentTLS)
	}
	return sortedPorts(ports)
}

func sortedPorts(p []uint16) []uint16 {
	p = slices.Clone(p)
	slices.Sort(p)
	return slices.Compact(p)
}

func commentArg(s FirewallSpec) string {
	return "-m comment --comment " + strconv.Quote(RuleComment(s.RunnerID, s.JobID))
}

// quoteArgs quotes arguments containing spaces for iptables-restore.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t\"") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}
