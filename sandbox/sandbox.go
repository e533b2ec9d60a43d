// Package sandbox plumbs a job's network namespace: a /30 from a pool shared
// by every Airlock process on the host, a veth whose job end is eth0 inside
// the namespace, addresses, routes and sysctls, and the job's firewall.
//
// Host side: the gateway address (.1 of the /30) on the host veth, which is
// where the job's gateway (DNS, proxy) listens. Job side: eth0 with .2, a
// default route via .1, no IPv6.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/internal/nsenter"
	"github.com/airlock-ci/airlock/internal/procs"
	"github.com/airlock-ci/airlock/netpolicy"
)

// Defaults of Config.
const (
	DefaultPool     = "10.213.0.0/16"
	DefaultPoolFile = "/run/airlock/netpool.json"
)

// Config configures a Manager.
type Config struct {
	// RunnerID names every resource (veth names and aliases, chains, rule
	// comments, pool entries). Required.
	RunnerID string
	// Pool is the prefix the /30s are taken from (default DefaultPool).
	Pool netip.Prefix
	// PoolFile persists the allocations shared by all processes on the host
	// (default DefaultPoolFile).
	PoolFile string
	// Firewall installs the job's packet filter. Required: a sandbox
	// without its firewall would let the job reach the host.
	Firewall Firewall
	// Gateway ports the job may reach on its gateway address, and the
	// transparent proxy ports its TCP 80/443 are redirected to (0: none).
	TCPPorts        []uint16
	UDPPorts        []uint16
	TransparentHTTP uint16
	TransparentTLS  uint16
	Logger          hclog.Logger
}

// Firewall is the packet filter of job sandboxes (netpolicy's iptables
// Firewall is one; a native nftables one is another). Every method is
// atomic (a job never sees half of its rules), idempotent (Apply of an
// applied spec and Remove of a removed one succeed) and safe for
// concurrent use, also by several processes on one host.
type Firewall interface {
	// Apply installs the rules of spec: host side, and inside spec.NetNS
	// when it is set.
	Apply(ctx context.Context, spec netpolicy.FirewallSpec) error
	// Remove deletes the rules of spec; rules already gone are no error.
	Remove(ctx context.Context, spec netpolicy.FirewallSpec) error
	// Sweep removes the host-side rules of runnerID's jobs whose job tag
	// (netpolicy.JobTag) keep does not hold, and nothing of another runner.
	Sweep(ctx context.Context, runnerID string, keep func(jobTag string) bool) error
}

// Manager sets up and tears down job networks. It is safe for concurrent
// use, and several Managers (in several processes) may share a pool file.
type Manager struct {
	cfg  Config
	log  hclog.Logger
	pool *pool
	// pid and pidStart name this process in the pool file's allocations.
	pid      int
	pidStart uint64
}

// NewManager validates cfg and returns a Manager.
func NewManager(cfg Config) (*Manager, error) {
	var errs []error
	if cfg.RunnerID == "" {
		errs = append(errs, errors.New("sandbox: runner id is required"))
	}
	if cfg.Firewall == nil {
		errs = append(errs, errors.New("sandbox: firewall is required"))
	}
	if !cfg.Pool.IsValid() {
		cfg.Pool = netip.MustParsePrefix(DefaultPool)
	}
	if cfg.PoolFile == "" {
		cfg.PoolFile = DefaultPoolFile
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	p, err := newPool(cfg.Pool, cfg.PoolFile)
	errs = append(errs, err)
	pid := os.Getpid()
	start, err := procs.StartTime(pid)
	if err != nil {
		errs = append(errs, fmt.Errorf("sandbox: reading own start time: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, log: cfg.Logger.Named("sandbox"), pool: p, pid: pid, pidStart: start}, nil
}

// Network is one job's plumbed network.
type Network struct {
	RunnerID  string
	JobID     string
	HostIf    string
	Prefix    netip.Prefix
	GatewayIP netip.Addr
	JobIP     netip.Addr
	NetNS     string

	m        *Manager
	mu       sync.Mutex
	torndown bool
}

// FirewallSpec returns the firewall spec of the network.
func (n *Network) FirewallSpec() netpolicy.FirewallSpec {
	c := n.m.cfg
	return netpolicy.FirewallSpec{
		RunnerID: n.RunnerID, JobID: n.JobID, HostIf: n.HostIf, NetNS: n.NetNS,
		GatewayIP: n.GatewayIP, JobIP: n.JobIP,
		TCPPorts: c.TCPPorts, UDPPorts: c.UDPPorts,
		TransparentHTTP: c.TransparentHTTP, TransparentTLS: c.TransparentTLS,
	}
}

// Setup plumbs the network namespace at netnsPath for job jobID: it
// allocates a /30, creates the veth (job end eth0 created directly inside
// the namespace), configures both ends and applies the firewall. On failure
// everything Setup created is removed again.
func (m *Manager) Setup(ctx context.Context, jobID string, netnsPath string) (*Network, error) {
	if jobID == "" {
		return nil, errors.New("setting up network: job id is empty")
	}
	hostIf := netpolicy.HostIfName(m.cfg.RunnerID, jobID)
	t0 := time.Now()
	taken, err := m.pool.hostTaken()
	if err != nil {
		return nil, fmt.Errorf("setting up network for job %s: %w", jobID, err)
	}
	prefix, err := m.pool.allocate(allocation{
		RunnerID: m.cfg.RunnerID, JobID: jobID, PID: m.pid, PIDStart: m.pidStart,
		HostIf: hostIf, Time: time.Now().UTC(),
	}, taken)
	if err != nil {
		return nil, fmt.Errorf("setting up network for job %s: allocating address: %w", jobID, err)
	}
	gw := prefix.Addr().Next()
	n := &Network{
		RunnerID: m.cfg.RunnerID, JobID: jobID, HostIf: hostIf, Prefix: prefix,
		GatewayIP: gw, JobIP: gw.Next(), NetNS: netnsPath, m: m,
	}
	// The links and the rules are made at once: they wait on different
	// kernel locks (rtnl for links, nfnetlink's for rules), and the rules
	// name interfaces, they need none to exist. Nothing of the job runs
	// before Setup returns, so no packet of it meets a link without its
	// rules; other jobs' packets are dropped by their own tables.
	t1 := time.Now()
	var plumbErr error
	var plumbTook time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		plumbErr = m.plumb(ctx, n)
		plumbTook = time.Since(t1)
	}()
	fwErr := m.cfg.Firewall.Apply(ctx, n.FirewallSpec())
	fwTook := time.Since(t1)
	<-done
	if err := errors.Join(plumbErr, fwErr); err != nil {
		terr := n.Teardown(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("setting up network for job %s: %w", jobID, errors.Join(err, terr))
	}
	m.log.Debug("network set up", "job", jobID, "veth", hostIf, "gateway", gw, "prefix", prefix,
		"allocate", t1.Sub(t0), "plumb", plumbTook, "firewall", fwTook)
	return n, nil
}

// plumb creates and configures the veth pair.
func (m *Manager) plumb(ctx context.Context, n *Network) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	target, err := netns.GetFromPath(n.NetNS)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", n.NetNS, err)
	}
	defer target.Close()
	same, err := nsenter.IsOwn(target)
	if err != nil {
		return fmt.Errorf("opening own network namespace: %w", err)
	}
	if same {
		return fmt.Errorf("refusing to plumb %s: it is the host's network namespace", n.NetNS)
	}

	// Every change of a link takes the kernel's one rtnl lock, which all
	// jobs' setups (and the engine's) share: the host end gets its alias
	// in the creating request. It comes up only once IPv6 is off on it
	// (up first would autoconfigure a link-local address, more work under
	// that lock, and an address the job's end could reach).
	la := netlink.NewLinkAttrs()
	la.Name = n.HostIf
	// One queue each way, said in the request: without it the kernel
	// makes one per CPU and then cuts them to one, and that cut waits
	// for an RCU grace period while holding the rtnl lock — every other
	// job's (and the engine's) link change waits behind it.
	la.NumTxQueues, la.NumRxQueues = 1, 1
	la.Alias = "airlock runner=" + n.RunnerID + " job=" + n.JobID
	if len(la.Alias) > 255 {
		la.Alias = la.Alias[:255]
	}
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(target))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", n.HostIf, err)
	}
	host, err := netlink.LinkByName(n.HostIf)
	if err != nil {
		return fmt.Errorf("finding veth %s: %w", n.HostIf, err)
	}
	if host.Attrs().Alias != la.Alias {
		// A kernel that does not take the alias at creation.
		if err := netlink.LinkSetAlias(host, la.Alias); err != nil {
			return fmt.Errorf("setting alias of veth %s: %w", n.HostIf, err)
		}
	}
	if err := writeSysctls(map[string]string{
		"net/ipv6/conf/" + n.HostIf + "/disable_ipv6": "1",
		"net/ipv4/conf/" + n.HostIf + "/rp_filter":    "1",
	}); err != nil {
		return err
	}
	bits := n.Prefix.Bits()
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(n.GatewayIP, bits)}); err != nil {
		return fmt.Errorf("adding %s to veth %s: %w", n.GatewayIP, n.HostIf, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bringing up veth %s: %w", n.HostIf, err)
	}
	// The kernel names the job end's index in the host end's IFLA_LINK:
	// no lookup inside the namespace (a round trip) is needed for it.
	return m.plumbInside(n, target, host.Attrs().ParentIndex)
}

// plumbInside configures the job end: sysctls (which follow the calling
// thread's namespace), lo, eth0 (index ethIndex; 0: look it up), address
// and default route.
func (m *Manager) plumbInside(n *Network, target netns.NsHandle, ethIndex int) error {
	if err := inNetNS(target, func() error {
		return writeSysctls(map[string]string{
			"net/ipv6/conf/all/disable_ipv6":     "1",
			"net/ipv6/conf/default/disable_ipv6": "1",
			"net/ipv6/conf/eth0/disable_ipv6":    "1",
			"net/ipv4/ping_group_range":          "1 0",
		})
	}); err != nil {
		return fmt.Errorf("configuring namespace %s: %w", n.NetNS, err)
	}
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return fmt.Errorf("opening netlink in namespace %s: %w", n.NetNS, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo in namespace %s: %w", n.NetNS, err)
	}
	// A container runtime has brought lo up already (Docker does).
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bringing up lo in namespace %s: %w", n.NetNS, err)
		}
	}
	var eth netlink.Link = &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: ethIndex}}
	if ethIndex == 0 {
		if eth, err = h.LinkByName("eth0"); err != nil {
			return fmt.Errorf("finding eth0 in namespace %s: %w", n.NetNS, err)
		}
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(n.JobIP, n.Prefix.Bits())}); err != nil {
		return fmt.Errorf("adding %s to eth0 in namespace %s: %w", n.JobIP, n.NetNS, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bringing up eth0 in namespace %s: %w", n.NetNS, err)
	}
	route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: n.GatewayIP.AsSlice()}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("adding default route in namespace %s: %w", n.NetNS, err)
	}
	return nil
}

// Teardown removes the job's firewall rules and host veth (which takes the
// job end with it) and releases the /30. It is idempotent and safe after a
// partial Setup.
func (n *Network) Teardown(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.torndown {
		return nil
	}
	var errs []error
	if err := deleteLink(n.HostIf); err != nil {
		errs = append(errs, err)
	}
	if err := n.m.cfg.Firewall.Remove(ctx, n.FirewallSpec()); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		// Keep the allocation while the veth may still carry the /30: a
		// later Sweep frees it.
		if err := n.m.pool.release(n.Prefix, n.HostIf); err != nil {
			errs = append(errs, fmt.Errorf("releasing %s: %w", n.Prefix, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tearing down network of job %s: %w", n.JobID, err)
	}
	n.torndown = true
	n.m.log.Debug("network torn down", "job", n.JobID, "veth", n.HostIf)
	return nil
}

// deleteLink deletes a host link by name; a missing link is not an error.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding veth %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting veth %s: %w", name, err)
	}
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}
