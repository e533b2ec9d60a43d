package hostcheck

import (
	"context"
	"fmt"
	"strings"

	"github.com/airlock-ci/airlock/netpolicy"
)

// checkFirewall says which packet filter jobs get ([network] firewall,
// and for auto why), and with nftables what the host's shared table
// holds. It reads through the same commands an admin would run.
func checkFirewall(ctx context.Context, e *Env, mode string) Result {
	r := Result{Name: "firewall"}
	backend, why, err := netpolicy.ChooseFirewall(mode, cmdProbe{ctx: ctx, e: e})
	if err != nil {
		r.Status, r.Detail = Fail, err.Error()
		r.Fix = `set [network] firewall to "auto", "nftables" or "iptables"`
		return r
	}
	r.Detail = backend + " (" + why + ")"
	if backend != netpolicy.FirewallNFTables {
		return r
	}
	if _, err := e.Cmd.LookPath("nft"); err != nil {
		r.Detail += "; nft is not installed, so the table is not listed here"
		return r
	}
	tables, err := e.Cmd.Output(ctx, "nft", "list", "tables", "inet")
	if err != nil {
		r.Status = Fail
		r.Detail += "; nf_tables does not answer: " + oneLine(err.Error())
		r.Fix = `load nf_tables (modprobe nf_tables), or set [network] firewall = "iptables"`
		return r
	}
	if !hasLine(string(tables), "table inet "+netpolicy.HostTable) {
		r.Detail += fmt.Sprintf("; table inet %s not made yet (the first job makes it)", netpolicy.HostTable)
		return r
	}
	table, err := e.Cmd.Output(ctx, "nft", "list", "table", "inet", netpolicy.HostTable)
	if err != nil {
		r.Status = Warn
		r.Detail += fmt.Sprintf("; listing table inet %s: %s", netpolicy.HostTable, oneLine(err.Error()))
		r.Fix = "run airlock doctor as root"
		return r
	}
	jobs := 0
	for line := range strings.Lines(string(table)) {
		if strings.HasPrefix(strings.TrimSpace(line), "chain "+netpolicy.ChainPrefix) {
			jobs++
		}
	}
	r.Detail += fmt.Sprintf("; table inet %s holds %d job chains", netpolicy.HostTable, jobs)
	return r
}

func hasLine(s, want string) bool {
	for line := range strings.Lines(s) {
		if strings.TrimSpace(line) == want {
			return true
		}
	}
	return false
}

// cmdProbe is netpolicy.FirewallProbe through the Env's commands.
type cmdProbe struct {
	ctx context.Context
	e   *Env
}

func (p cmdProbe) IPTablesBackend() (string, error) {
	out, err := p.e.Cmd.Output(p.ctx, "iptables", "--version")
	if err != nil {
		return "", err
	}
	return iptablesBackend(string(out))
}

func (p cmdProbe) InputPolicy() (string, error) {
	out, err := p.e.Cmd.Output(p.ctx, "iptables", "-w", "-t", "filter", "-S", "INPUT")
	if err != nil {
		return "", err
	}
	return netpolicy.InputPolicyOf(strings.Split(string(out), "\n"))
}
