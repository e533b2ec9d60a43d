package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// removeMatching deletes, in one iptables-restore call per address family,
// every rule that mentions a job veth or chain whose (runner tag, job tag)
// match accepts, and every such chain. Rules are found in the iptables-save
// output, so removal is idempotent. A failed restore (another process changed
// the same rules meanwhile) is retried once with a fresh listing.
func (f *Firewall) removeMatching(ctx context.Context, match func(runnerTag, jobTag string) bool) error {
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, t := range []tools{f.v4, f.v6} {
		wg.Go(func() { errs[i] = t.removeMatching(ctx, match) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (t tools) removeMatching(ctx context.Context, match func(runnerTag, jobTag string) bool) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var saved string
		if saved, err = t.saveFilter(ctx); err != nil {
			return err
		}
		script := deletionScript(saved, match)
		if script == "" {
			return nil
		}
		if err = t.restoreHost(ctx, script); err == nil {
			return nil
		}
	}
	return err
}

// deletionScript renders an iptables-restore script deleting the matching
// rules and chains found in the filter table listing saved. It returns ""
// when nothing matches.
func deletionScript(saved string, match func(runnerTag, jobTag string) bool) string {
	var dels, chains []string
	inFilter := false
	for line := range strings.Lines(saved) {
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.HasPrefix(line, "*"):
			inFilter = line == "*filter"
		case !inFilter:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if rt, jt, ok := parseChainName(name); ok && match(rt, jt) {
				chains = append(chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			if _, _, own := parseChainName(fields[1]); own {
				continue // flushed with its chain
			}
			if ruleMatches(fields, match) {
				dels = append(dels, "-D"+line[2:])
			}
		}
	}
	if len(dels) == 0 && len(chains) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, d := range dels {
		b.WriteString(d + "\n")
	}
	for _, c := range chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n-X %s\n", c, c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// ruleMatches reports whether a saved rule's fields name a matching job
// veth (-i/-o) or jump to a matching job chain (-j/-g).
func ruleMatches(fields []string, match func(runnerTag, jobTag string) bool) bool {
	for i := 0; i+1 < len(fields); i++ {
		var rt, jt string
		var ok bool
		switch fields[i] {
		case "-i", "-o":
			rt, jt, ok = parseHostIfName(fields[i+1])
		case "-j", "-g":
			rt, jt, ok = parseChainName(fields[i+1])
		}
		if ok && match(rt, jt) {
			return true
		}
	}
	return false
}

// parseHostIfName splits a job veth name into its runner and job tags.
func parseHostIfName(name string) (runnerTag, jobTag string, ok bool) {
	rest, ok := strings.CutPrefix(name, HostIfPrefix)
	if !ok || len(rest) != runnerTagLen+jobTagLen || !isHex(rest, len(rest)) {
		return "", "", false
	}
	return rest[:runnerTagLen], rest[runnerTagLen:], true
}

// parseChainName splits a per-job chain name into its runner and job tags.
func parseChainName(name string) (runnerTag, jobTag string, ok bool) {
	rest, ok := strings.CutPrefix(name, ChainPrefix)
	if !ok {
		return "", "", false
	}
	rt, jt, ok := strings.Cut(rest, "-")
	if !ok || !isHex(rt, runnerTagLen) || !isHex(jt, jobTagLen) {
		return "", "", false
	}
	return rt, jt, true
}
