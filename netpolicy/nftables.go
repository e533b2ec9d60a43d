package netpolicy

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/hashicorp/go-hclog"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NFTables installs the per-job packet filter with native nf_tables: one
// netlink batch per rule set instead of an iptables-restore exec, and the
// in-namespace rules through a netlink socket opened in the job's
// namespace (no thread is moved into it).
//
// Host side, every job's rules live in one table, HostTable (inet
// family), made once and shared by every runner and process on the host:
// its base chain input sends a packet from a job's veth, through the
// verdict map "jobs" keyed by interface name, to the job's own regular
// chain (named like the iptables chain, ChainName), which accepts only the
// job's address to its own gateway's ports and drops the rest, IPv6
// included; its base chain forward drops everything from a veth in the set
// "veths". A job adds a chain, its rules and two elements — no base chain,
// so no hook registration and no grace period on removal, and a host
// packet costs one map lookup however many jobs run (the kernel also
// serialises every nf_tables transaction of the host: a job's stays
// short). A drop in any table is
// final in nf_tables, so the rules are authoritative whatever other tables
// (Docker's, the host's) say. An accept is not final, though: a host whose
// INPUT policy drops would still drop the job's gateway traffic, which is
// why ChooseFirewall takes nftables only when the host's filter lets it.
//
// In the job's namespace, one inet table: output policy drop but loopback
// and the gateway ports, with TCP reset and ICMP admin-prohibited for the
// rest so that denied connections fail fast; input and forward policy drop
// (loopback and replies accepted); TCP 80 and 443 redirected to the
// transparent proxy ports.
//
// NFTables is safe for concurrent use, also by several processes: every
// Apply and Remove is one atomic transaction, and making the shared table
// is idempotent.
type NFTables struct {
	log hclog.Logger
	mu  sync.Mutex
	// host is the lasting netlink connection to the host's namespace.
	host *nftables.Conn
	// table is the shared host table's name (HostTable unless a test
	// asks for its own); ready: this process made (or found) it.
	table string
	ready bool

	// Deferred removal (NFTablesOptions.DeferRemove): job chains (name to
	// veth) queued for deletion, deleted together by one goroutine.
	deferRemove bool
	pending     map[string]string
	kick        chan struct{}
	stopped     chan struct{}
	closeMu     sync.Once
}

// NFTablesOptions tune an NFTables.
type NFTablesOptions struct {
	// DeferRemove makes Remove queue the job's chain and return at once;
	// a background goroutine deletes the queued chains in one transaction,
	// off the job's path. The queued chain is reached only from the job's
	// veth, which is gone by then, so nothing is let through meanwhile. A
	// crash before the deletion leaves the chain to Sweep. Close deletes
	// what is still queued.
	DeferRemove bool
	// Table names the shared host table; "" is HostTable. Tests that
	// break their table on purpose use one of their own.
	Table string
}

// HostTable is the host's nf_tables table (inet) holding every job's
// rules; nsTableName is the table Airlock owns inside a job's namespace.
const (
	HostTable   = "airlock"
	nsTableName = "airlock"
	jobsMap     = "jobs"
	vethsSet    = "veths"
)

// NewNFTables opens a netlink connection for nf_tables and checks that the
// kernel answers on it.
func NewNFTables(log hclog.Logger, opts ...NFTablesOptions) (*NFTables, error) {
	var o NFTablesOptions
	for _, op := range opts {
		o = op
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("opening nf_tables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		c.CloseLasting()
		return nil, fmt.Errorf("opening nf_tables: listing tables: %w", err)
	}
	f := &NFTables{log: log.Named("nftables"), host: c, deferRemove: o.DeferRemove, table: cmp.Or(o.Table, HostTable)}
	if f.deferRemove {
		f.pending = map[string]string{}
		f.kick = make(chan struct{}, 1)
		f.stopped = make(chan struct{})
		go f.remover()
	}
	return f, nil
}

// Close deletes the chains still queued for removal and closes the
// netlink connection.
func (f *NFTables) Close() error {
	var err error
	f.closeMu.Do(func() {
		if f.deferRemove {
			close(f.kick)
			<-f.stopped
			err = f.removePending()
		}
		err = errors.Join(err, f.host.CloseLasting())
	})
	return err
}

// remover deletes queued chains until Close.
func (f *NFTables) remover() {
	defer close(f.stopped)
	for range f.kick {
		if err := f.removePending(); err != nil {
			f.log.Error("deleting firewall chains of finished jobs; the next sweep retries", "error", err)
		}
	}
}

// removePending deletes every queued chain in one transaction.
func (f *NFTables) removePending() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) == 0 {
		return nil
	}
	n := len(f.pending)
	err := f.flushLocked(func(c *nftables.Conn, t hostObjects) {
		for name, veth := range f.pending {
			t.removeJob(c, name, veth)
		}
	})
	clear(f.pending)
	if err != nil {
		return fmt.Errorf("deleting %d job chains: %w", n, err)
	}
	return nil
}

// Backend returns "nftables".
func (f *NFTables) Backend() string { return "nftables" }

// Apply installs the job's host-side chain and, when spec.NetNS is set, the
// rules inside the job's namespace. Applying again rewrites both.
func (f *NFTables) Apply(ctx context.Context, spec FirewallSpec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("applying firewall for job %s: %w", spec.JobID, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("applying firewall for job %s: %w", spec.JobID, err)
	}
	start := time.Now()
	var nsErr error
	var nsTook time.Duration
	var wg sync.WaitGroup
	if spec.NetNS != "" {
		wg.Go(func() {
			nsErr = applyInNetNS(spec)
			nsTook = time.Since(start)
		})
	}
	name := ChainName(spec.RunnerID, spec.JobID)
	hostErr := f.flush(func(c *nftables.Conn, t hostObjects) {
		// A chain of the same job still queued for removal is rewritten
		// here instead.
		delete(f.pending, name)
		t.addJob(c, spec)
	})
	hostTook := time.Since(start)
	wg.Wait()
	if hostErr != nil {
		hostErr = fmt.Errorf("host chain: %w", hostErr)
	}
	if nsErr != nil {
		nsErr = fmt.Errorf("namespace %s: %w", spec.NetNS, nsErr)
	}
	if err := errors.Join(hostErr, nsErr); err != nil {
		rmErr := f.removeNow(name, spec.HostIf)
		return fmt.Errorf("applying firewall for job %s: %w", spec.JobID, errors.Join(err, rmErr))
	}
	f.log.Debug("firewall applied", "job", spec.JobID, "veth", spec.HostIf, "chain", name, "host", hostTook, "ns", nsTook)
	return nil
}

// Remove deletes the job's host-side chain and its map elements. The rules
// inside the job's namespace die with the namespace. Removing a chain that
// is gone is not an error.
func (f *NFTables) Remove(ctx context.Context, spec FirewallSpec) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("removing firewall for job %s: %w", spec.JobID, err)
	}
	if err := validIfName(spec.HostIf); err != nil {
		return fmt.Errorf("removing firewall for job %s: veth: %w", spec.JobID, err)
	}
	name := ChainName(spec.RunnerID, spec.JobID)
	if f.deferRemove {
		f.mu.Lock()
		f.pending[name] = spec.HostIf
		f.mu.Unlock()
		select {
		case f.kick <- struct{}{}:
		default:
		}
		return nil
	}
	if err := f.removeNow(name, spec.HostIf); err != nil {
		return fmt.Errorf("removing firewall for job %s: %w", spec.JobID, err)
	}
	return nil
}

// removeNow deletes one job's chain and elements. Adding each first makes
// the delete succeed when it is gone, in the same transaction: no
// listing, no race with a concurrent Remove.
func (f *NFTables) removeNow(name, veth string) error {
	return f.flush(func(c *nftables.Conn, t hostObjects) { t.removeJob(c, name, veth) })
}

// Sweep deletes the host-side chains of runner runnerID whose job tag keep
// does not hold on to, with their map elements, in one transaction (and
// the per-job tables earlier versions made). Other runners' chains, and
// anything that is not Airlock's, are never touched.
func (f *NFTables) Sweep(ctx context.Context, runnerID string, keep func(jobTag string) bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sweeping firewall of runner %s: %w", runnerID, err)
	}
	rt := RunnerTag(runnerID)
	f.mu.Lock()
	defer f.mu.Unlock()
	tables, err := f.host.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("sweeping firewall of runner %s: listing tables: %w", runnerID, err)
	}
	var oldTables []*nftables.Table
	shared := false
	for _, t := range tables {
		if jt, ok := JobTagOfChain(rt, t.Name); ok && !keep(jt) {
			oldTables = append(oldTables, t)
		}
		shared = shared || t.Name == f.table
	}
	gone := map[string]string{} // chain → veth ("" when no element names it)
	if shared {
		chains, err := f.host.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("sweeping firewall of runner %s: listing chains: %w", runnerID, err)
		}
		for _, ch := range chains {
			if ch.Table.Name != f.table {
				continue
			}
			if jt, ok := JobTagOfChain(rt, ch.Name); ok && !keep(jt) {
				gone[ch.Name] = ""
			}
		}
		if len(gone) > 0 {
			jobs := &nftables.Set{Table: &nftables.Table{Family: nftables.TableFamilyINet, Name: f.table}, Name: jobsMap}
			els, err := f.host.GetSetElements(jobs)
			if err != nil {
				return fmt.Errorf("sweeping firewall of runner %s: listing map %s: %w", runnerID, jobsMap, err)
			}
			for _, e := range els {
				if ch := jumpTarget(e.Val); ch != "" {
					if _, ok := gone[ch]; ok {
						gone[ch] = ifName(e.Key)
					}
				}
			}
		}
	}
	if len(oldTables) == 0 && len(gone) == 0 {
		return nil
	}
	if err := f.flushLocked(func(c *nftables.Conn, t hostObjects) {
		for _, old := range oldTables {
			c.AddTable(old)
			c.DelTable(old)
		}
		for name, veth := range gone {
			t.removeJob(c, name, veth)
		}
	}); err != nil {
		return fmt.Errorf("sweeping firewall of runner %s: %w", runnerID, err)
	}
	f.log.Debug("swept firewall", "runner", runnerID, "chains", len(gone), "old tables", len(oldTables))
	return nil
}

// Verify checks that the job's chain exists and that the job's veth is
// sent to it and dropped in forward.
func (f *NFTables) Verify(ctx context.Context, spec FirewallSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := ChainName(spec.RunnerID, spec.JobID)
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: f.table}
	var errs []error
	if _, err := f.host.ListChain(t, name); err != nil {
		errs = append(errs, fmt.Errorf("chain %s of table %s: %w", name, f.table, err))
	}
	if els, err := f.host.GetSetElements(&nftables.Set{Table: t, Name: jobsMap}); err != nil {
		errs = append(errs, fmt.Errorf("map %s of table %s: %w", jobsMap, f.table, err))
	} else if !slices.ContainsFunc(els, func(e nftables.SetElement) bool {
		return ifName(e.Key) == spec.HostIf && jumpTarget(e.Val) == name
	}) {
		errs = append(errs, fmt.Errorf("map %s of table %s: no element sending %s to %s", jobsMap, f.table, spec.HostIf, name))
	}
	if els, err := f.host.GetSetElements(&nftables.Set{Table: t, Name: vethsSet}); err != nil {
		errs = append(errs, fmt.Errorf("set %s of table %s: %w", vethsSet, f.table, err))
	} else if !slices.ContainsFunc(els, func(e nftables.SetElement) bool { return ifName(e.Key) == spec.HostIf }) {
		errs = append(errs, fmt.Errorf("set %s of table %s: %s missing (its forwarding would not be dropped)", vethsSet, f.table, spec.HostIf))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("verifying firewall for job %s: %w", spec.JobID, err)
	}
	return nil
}

// flush sends one transaction on the host connection.
func (f *NFTables) flush(build func(c *nftables.Conn, t hostObjects)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flushLocked(build)
}

// flushLocked sends one transaction, making the shared table first when
// this process has not (or when it has gone: an admin's "nft flush
// ruleset" is repaired by the next job instead of failing every job).
func (f *NFTables) flushLocked(build func(c *nftables.Conn, t hostObjects)) error {
	t := hostObjectsOf(f.table)
	if !f.ready {
		t.ensure(f.host)
		build(f.host, t)
		if err := f.host.Flush(); err != nil {
			return err
		}
		f.ready = true
		return nil
	}
	build(f.host, t)
	err := f.host.Flush()
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return err
	}
	f.log.Warn("the host's airlock nf_tables table was gone; making it again", "table", f.table)
	t.ensure(f.host)
	build(f.host, t)
	return f.host.Flush()
}

// hostObjects names the shared table's parts for one transaction.
type hostObjects struct {
	table *nftables.Table
	jobs  *nftables.Set // ifname → jump to the job's chain
	veths *nftables.Set // ifname, dropped in forward
}

func hostObjectsOf(table string) hostObjects {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: table}
	return hostObjects{
		table: t,
		jobs:  &nftables.Set{Table: t, Name: jobsMap, KeyType: nftables.TypeIFName, IsMap: true, DataType: nftables.TypeVerdict},
		veths: &nftables.Set{Table: t, Name: vethsSet, KeyType: nftables.TypeIFName},
	}
}

// ensure queues the shared table, its sets and its two base chains, each
// with its one rule: idempotent (the base chains are flushed and their
// rule added again in the same transaction), so two processes making it at
// once end with one copy.
func (h hostObjects) ensure(c *nftables.Conn) {
	c.AddTable(h.table)
	// AddSet only fails on a marshalling error of a static definition.
	_ = c.AddSet(h.jobs, nil)
	_ = c.AddSet(h.veths, nil)
	// Just before iptables' filter (priority 0): the job's packets meet
	// the authoritative drop first.
	prio := nftables.ChainPriorityRef(*nftables.ChainPriorityFilter - 10)
	accept := nftables.ChainPolicyAccept
	in := c.AddChain(&nftables.Chain{Name: "input", Table: h.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: prio, Policy: &accept})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: h.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: prio, Policy: &accept})
	c.FlushChain(in)
	c.FlushChain(fwd)
	iif := []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}}
	c.AddRule(&nftables.Rule{Table: h.table, Chain: in, Exprs: cat(iif, []expr.Any{
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: h.jobs.Name, SetID: h.jobs.ID}})})
	c.AddRule(&nftables.Rule{Table: h.table, Chain: fwd, Exprs: cat(iif, []expr.Any{
		&expr.Lookup{SourceRegister: 1, SetName: h.veths.Name, SetID: h.veths.ID}}, verdict(expr.VerdictDrop))})
}

// addJob queues the job's chain (created or rewritten) and its elements.
func (h hostObjects) addJob(c *nftables.Conn, s FirewallSpec) {
	ch := c.AddChain(&nftables.Chain{Name: ChainName(s.RunnerID, s.JobID), Table: h.table})
	c.FlushChain(ch)
	pair := cat(matchIPv4(), matchAddr(12, s.JobIP), matchAddr(16, s.GatewayIP))
	for _, p := range s.tcpPorts() {
		c.AddRule(&nftables.Rule{Table: h.table, Chain: ch, Exprs: cat(pair, matchL4(unix.IPPROTO_TCP), matchDport(p), verdict(expr.VerdictAccept))})
	}
	for _, p := range sortedPorts(s.UDPPorts) {
		c.AddRule(&nftables.Rule{Table: h.table, Chain: ch, Exprs: cat(pair, matchL4(unix.IPPROTO_UDP), matchDport(p), verdict(expr.VerdictAccept))})
	}
	c.AddRule(&nftables.Rule{Table: h.table, Chain: ch, Exprs: cat(matchIPv4(), matchEstablished(), verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: h.table, Chain: ch, Exprs: verdict(expr.VerdictDrop)})
	// Static definitions: the element calls fail only on marshalling.
	_ = c.SetAddElements(h.jobs, []nftables.SetElement{h.jump(s.HostIf, ch.Name)})
	_ = c.SetAddElements(h.veths, []nftables.SetElement{{Key: ifKey(s.HostIf)}})
}

// removeJob queues the deletion of a job's elements and chain; each is
// added first, so the deletion holds whether or not it still exists.
// veth "" (a chain no element names) deletes the chain alone.
func (h hostObjects) removeJob(c *nftables.Conn, name, veth string) {
	ch := c.AddChain(&nftables.Chain{Name: name, Table: h.table})
	if veth != "" {
		el := []nftables.SetElement{h.jump(veth, name)}
		_ = c.SetAddElements(h.jobs, el)
		_ = c.SetDeleteElements(h.jobs, el)
		v := []nftables.SetElement{{Key: ifKey(veth)}}
		_ = c.SetAddElements(h.veths, v)
		_ = c.SetDeleteElements(h.veths, v)
	}
	c.FlushChain(ch)
	c.DelChain(ch)
}

func (h hostObjects) jump(veth, chain string) nftables.SetElement {
	return nftables.SetElement{Key: ifKey(veth), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func ifKey(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func ifName(key []byte) string {
	if i := bytes.IndexByte(key, 0); i >= 0 {
		key = key[:i]
	}
	return string(key)
}

// jumpTarget is the chain a verdict map element's data jumps to: the
// data is the nested verdict (NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN).
func jumpTarget(val []byte) string {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(ad.String(), "\x00")
		}
	}
	return ""
}

// applyInNetNS replaces Airlock's table inside the job's namespace through
// a netlink socket opened in it.
func applyInNetNS(spec FirewallSpec) error {
	h, err := netns.GetFromPath(spec.NetNS)
	if err != nil {
		return fmt.Errorf("opening namespace: %w", err)
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return fmt.Errorf("opening nf_tables: %w", err)
	}
	nsTable(c, spec)
	return c.Flush()
}

// nsTable queues the job namespace's table, replacing any earlier one.
func nsTable(c *nftables.Conn, s FirewallSpec) {
	// Flushing rather than deleting an earlier table: deleting base
	// chains costs the kernel a grace period (~10 ms), flushing does not.
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: nsTableName})
	c.FlushTable(t)
	drop, accept := nftables.ChainPolicyDrop, nftables.ChainPolicyAccept
	chain := func(name string, hook *nftables.ChainHook, typ nftables.ChainType, prio *nftables.ChainPriority, policy *nftables.ChainPolicy) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: policy})
	}
	in := chain("input", nftables.ChainHookInput, nftables.ChainTypeFilter, nftables.ChainPriorityFilter, &drop)
	chain("forward", nftables.ChainHookForward, nftables.ChainTypeFilter, nftables.ChainPriorityFilter, &drop)
	out := chain("output", nftables.ChainHookOutput, nftables.ChainTypeFilter, nftables.ChainPriorityFilter, &drop)
	nat := chain("nat_output", nftables.ChainHookOutput, nftables.ChainTypeNAT, nftables.ChainPriorityNATDest, &accept)

	rule := func(ch *nftables.Chain, e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(e...)})
	}
	rule(in, matchIfname(expr.MetaKeyIIFNAME, "lo", expr.CmpOpEq), verdict(expr.VerdictAccept))
	rule(in, matchIPv4(), matchEstablished(), verdict(expr.VerdictAccept))
	lo := matchIfname(expr.MetaKeyOIFNAME, "lo", expr.CmpOpEq)
	rule(out, lo, verdict(expr.VerdictAccept))
	toGW := cat(matchIPv4(), matchAddr(16, s.GatewayIP))
	for _, p := range s.tcpPorts() {
		rule(out, toGW, matchL4(unix.IPPROTO_TCP), matchDport(p), verdict(expr.VerdictAccept))
	}
	for _, p := range sortedPorts(s.UDPPorts) {
		rule(out, toGW, matchL4(unix.IPPROTO_UDP), matchDport(p), verdict(expr.VerdictAccept))
	}
	// IPv6 falls to the policy; IPv4 is refused loudly.
	rule(out, matchIPv4(), matchL4(unix.IPPROTO_TCP), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})
	rule(out, matchIPv4(), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}})

	notLo := matchIfname(expr.MetaKeyOIFNAME, "lo", expr.CmpOpNeq)
	for _, r := range []struct{ from, to uint16 }{{80, s.TransparentHTTP}, {443, s.TransparentTLS}} {
		if r.to == 0 {
			continue
		}
		rule(nat, notLo, matchIPv4(), matchL4(unix.IPPROTO_TCP), matchDport(r.from), []expr.Any{
			&expr.Immediate{Register: 1, Data: s.GatewayIP.AsSlice()},
			&expr.Immediate{Register: 2, Data: be16(r.to)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		})
	}
}

// Expression helpers: each returns the expressions of one match.

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func matchIfname(key expr.MetaKey, name string, op expr.CmpOp) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: ifKey(name)}}
}

func matchIPv4() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}
}

// matchAddr matches the IPv4 source (offset 12) or destination (16).
func matchAddr(offset uint32, a netip.Addr) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()}}
}

func matchL4(proto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}}}
}

func matchDport(p uint16) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(p)}}
}

func matchEstablished() []expr.Any {
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return []expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)}}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func be16(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }

// Firewall backends ChooseFirewall picks from.
const (
	FirewallAuto     = "auto"
	FirewallIPTables = "iptables"
	FirewallNFTables = "nftables"
)

// ChooseFirewall resolves a firewall mode ("auto", "iptables", "nftables";
// "" is auto) to a backend. Auto takes nftables when the host's iptables is
// nf_tables-based (Docker's rules then live in nf_tables too, so both see
// the same packets in one framework) and the host's IPv4 filter INPUT does
// not drop by policy (an accept in Airlock's table would not let the job's
// gateway traffic past such a policy); iptables otherwise. It returns the
// backend and why it was chosen.
func ChooseFirewall(mode string, probe FirewallProbe) (backend, why string, err error) {
	switch mode {
	case FirewallIPTables, FirewallNFTables:
		return mode, "configured", nil
	case "", FirewallAuto:
	default:
		return "", "", fmt.Errorf("firewall mode %q: must be auto, iptables or nftables", mode)
	}
	if probe == nil {
		probe = HostProbe(NewFirewall(nil))
	}
	if b, err := probe.IPTablesBackend(); err != nil {
		return FirewallIPTables, fmt.Sprintf("iptables backend unknown: %v", err), nil
	} else if b != "nf_tables" {
		return FirewallIPTables, fmt.Sprintf("iptables backend is %q", b), nil
	}
	pol, err := probe.InputPolicy()
	if err != nil {
		return FirewallIPTables, fmt.Sprintf("reading the INPUT policy: %v", err), nil
	}
	if pol != "ACCEPT" {
		return FirewallIPTables, "the host's INPUT policy is " + pol, nil
	}
	return FirewallNFTables, "iptables is nf_tables-based and INPUT accepts", nil
}

// FirewallProbe tells ChooseFirewall about the host.
type FirewallProbe interface {
	IPTablesBackend() (string, error) // "nf_tables" or "legacy"
	InputPolicy() (string, error)     // the IPv4 filter INPUT chain's policy
}

// HostProbe is the FirewallProbe of this host, reading through fw (the
// iptables Firewall the caller opened, or the error opening it).
func HostProbe(fw *Firewall, err error) FirewallProbe { return hostProbe{fw: fw, err: err} }

type hostProbe struct {
	fw  *Firewall
	err error
}

func (p hostProbe) IPTablesBackend() (string, error) {
	if p.err != nil {
		return "", p.err
	}
	return p.fw.Backend(), nil
}

func (p hostProbe) InputPolicy() (string, error) {
	if p.err != nil {
		return "", p.err
	}
	rules, err := p.fw.v4.ipt.List("filter", "INPUT")
	if err != nil {
		return "", err
	}
	return InputPolicyOf(rules)
}

// InputPolicyOf finds the policy in the lines of `iptables -S INPUT`.
func InputPolicyOf(rules []string) (string, error) {
	for _, r := range rules {
		if pol, ok := strings.CutPrefix(strings.TrimSpace(r), "-P INPUT "); ok {
			return strings.TrimSpace(pol), nil
		}
	}
	return "", errors.New("no policy line in iptables -S INPUT")
}
