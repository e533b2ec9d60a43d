package hostcheck

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
)

// iptablesTools are the commands the firewall runs.
var iptablesTools = []string{"iptables", "ip6tables", "iptables-restore", "ip6tables-restore"}

func checkIPTablesTools(e *Env) Result {
	r := Result{Name: "iptables tools"}
	var missing []string
	for _, t := range iptablesTools {
		if _, err := e.Cmd.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		r.Status = Fail
		r.Detail = "not found: " + strings.Join(missing, ", ")
		r.Fix = "apt-get install iptables (Debian/Ubuntu) or dnf install iptables-nft"
		return r
	}
	r.Detail = strings.Join(iptablesTools, ", ") + " found"
	return r
}

// Backends of iptables.
const (
	backendLegacy = "legacy"
	backendNFT    = "nf_tables"
)

// iptablesBackend parses `iptables --version`: "iptables v1.8.9
// (nf_tables)"; versions before 1.8 print no backend and are legacy.
func iptablesBackend(version string) (string, error) {
	v := strings.TrimSpace(version)
	switch {
	case strings.HasSuffix(v, "(nf_tables)"):
		return backendNFT, nil
	case strings.HasSuffix(v, "(legacy)"):
		return backendLegacy, nil
	case strings.HasPrefix(v, "iptables v1.") && !strings.Contains(v, "("):
		return backendLegacy, nil
	}
	return "", fmt.Errorf("unrecognised iptables --version output %q", v)
}

// dockerChains counts Docker's chain declarations (":DOCKER...") in
// iptables-save output.
func dockerChains(save []byte) int {
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(save))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), ":DOCKER") {
			n++
		}
	}
	return n
}

// checkIPTablesBackend compares iptables' backend with the one holding
// Docker's chains: rules in the other backend would be evaluated in a
// different table set than Docker's, in an order nobody intended.
func checkIPTablesBackend(ctx context.Context, e *Env) Result {
	r := Result{Name: "iptables backend"}
	if _, err := e.Cmd.LookPath("iptables"); err != nil {
		r.Status = Fail
		r.Detail = "iptables not found"
		r.Fix = "apt-get install iptables"
		return r
	}
	out, err := e.Cmd.Output(ctx, "iptables", "--version")
	if err != nil {
		r.Status = Fail
		r.Detail = oneLine(err.Error())
		r.Fix = "check that iptables runs: iptables --version"
		return r
	}
	ours, err := iptablesBackend(string(out))
	if err != nil {
		r.Status = Warn
		r.Detail = err.Error()
		r.Fix = "install iptables ≥ 1.8 (it names its backend)"
		return r
	}
	// The -save tools list the tables that exist without loading modules.
	var docker []string
	var notes []string
	for _, c := range []struct{ backend, tool string }{
		{backendLegacy, "iptables-legacy-save"},
		{backendNFT, "iptables-nft-save"},
	} {
		if _, err := e.Cmd.LookPath(c.tool); err != nil {
			continue
		}
		save, err := e.Cmd.Output(ctx, c.tool)
		if err != nil {
			notes = append(notes, oneLine(err.Error()))
			continue
		}
		if dockerChains(save) > 0 {
			docker = append(docker, c.backend)
		}
	}
	switchFix := func(to string) string {
		tool := map[string]string{backendLegacy: "legacy", backendNFT: "nft"}[to]
		return fmt.Sprintf("use the backend Docker uses: update-alternatives --set iptables /usr/sbin/iptables-%s && update-alternatives --set ip6tables /usr/sbin/ip6tables-%s", tool, tool)
	}
	switch {
	case len(docker) == 0 && len(notes) > 0:
		r.Status = Warn
		r.Detail = fmt.Sprintf("iptables uses %s; could not read the rule sets to find Docker's: %s", ours, strings.Join(notes, "; "))
		r.Fix = "run airlock doctor as root"
	case len(docker) == 0:
		r.Status = Warn
		r.Detail = fmt.Sprintf("iptables uses %s; no DOCKER chains found in either backend", ours)
		r.Fix = `start Docker with its iptables management on (no "iptables": false in /etc/docker/daemon.json), then re-run`
	case len(docker) == 2:
		r.Status = Warn
		r.Detail = fmt.Sprintf("iptables uses %s; DOCKER chains exist in both backends (left over from a backend switch)", ours)
		r.Fix = "reboot (or flush the backend Docker no longer uses) so that one backend holds Docker's rules"
	case docker[0] != ours:
		r.Status = Fail
		r.Detail = fmt.Sprintf("iptables uses %s but Docker's chains are in %s", ours, docker[0])
		r.Fix = switchFix(docker[0])
	default:
		r.Detail = fmt.Sprintf("iptables uses %s, as Docker does", ours)
	}
	return r
}
