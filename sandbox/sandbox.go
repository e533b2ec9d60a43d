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
	Firewall *netpolicy.Firewall
	// Gateway ports the job may reach on its gateway address, and the
	// transparent proxy ports its TCP 80/443 are redirected to (0: none).
	TCPPorts        []uint16
	UDPPorts        []uint16
	TransparentHTTP uint16
	TransparentTLS  uint16
	Logger          hclog.Logger
}

// Manager sets up and tears down job networks. It is safe for concurrent
// use, and several Managers (in several processes) may share a pool file.
type Manager struct {
	cfg  Config
	log  hclog.Logger
	pool *pool
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
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, log: cfg.Logger.Named("sandbox"), pool: p}, nil
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
	start, err := procs.StartTime(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("setting up network for job %s: reading own start time: %w", jobID, err)
	}
	hostIf := netpolicy.HostIfName(m.cfg.RunnerID, jobID)
	t0 := time.Now()
	prefix, err := m.pool.allocate(allocation{
		RunnerID: m.cfg.RunnerID, JobID: jobID, PID: os.Getpid(), PIDStart: start,
		HostIf: hostIf, Time: time.Now().UTC(),
	})
	if err != nil {
		return nil, fmt.Errorf("setting up network for job %s: allocating address: %w", jobID, err)
	}
	gw := prefix.Addr().Next()
	n := &Network{
		RunnerID: m.cfg.RunnerID, JobID: jobID, HostIf: hostIf, Prefix: prefix,
		GatewayIP: gw, JobIP: gw.Next(), NetNS: netnsPath, m: m,
	}
	t1 := time.Now()
	if err := m.plumb(ctx, n); err != nil {
		terr := n.Teardown(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("setting up network for job %s: %w", jobID, errors.Join(err, terr))
	}
	t2 := time.Now()
	if err := m.cfg.Firewall.Apply(ctx, n.FirewallSpec()); err != nil {
		terr := n.Teardown(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("setting up network for job %s: %w", jobID, errors.Join(err, terr))
	}
	m.log.Debug("network set up", "job", jobID, "veth", hostIf, "gateway", gw, "prefix", prefix,
		"allocate", t1.Sub(t0), "plumb", t2.Sub(t1), "firewall", time.Since(t2))
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
	self, err := netns.Get()
	if err != nil {
		return fmt.Errorf("opening own network namespace: %w", err)
	}
	same := self.Equal(target)
	self.Close()
	if same {
		return fmt.Errorf("refusing to plumb %s: it is the host's network namespace", n.NetNS)
	}

	la := netlink.NewLinkAttrs()
	la.Name = n.HostIf
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(target))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", n.HostIf, err)
	}
	host, err := netlink.LinkByName(n.HostIf)
	if err != nil {
		return fmt.Errorf("finding veth %s: %w", n.HostIf, err)
	}
	alias := "airlock runner=" + n.RunnerID + " job=" + n.JobID
	if len(alias) > 255 {
		alias = alias[:255]
	}
	if err := netlink.LinkSetAlias(host, alias); err != nil {
		return fmt.Errorf("setting alias of veth %s: %w", n.HostIf, err)
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
	return m.plumbInside(n, target)
}

// plumbInside configures the job end: sysctls (which follow the calling
// thread's namespace), lo, eth0, address and default route.
func (m *Manager) plumbInside(n *Network, target netns.NsHandle) error {
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
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing up lo in namespace %s: %w", n.NetNS, err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0 in namespace %s: %w", n.NetNS, err)
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
