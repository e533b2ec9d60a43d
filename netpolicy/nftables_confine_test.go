package netpolicy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// The host's chain alone (no rules in the job's namespace, as for a job
// that got past its own) confines the job to its gateway's ports: the
// jobs map's key is what the kernel matches the veth's name against.
func TestNFTablesHostChainConfines(t *testing.T) {
	testenv.RequireRoot(t)
	runner := fmt.Sprintf("nftconf-%d", os.Getpid())
	spec := testSpec(runner, "job-1")
	spec.GatewayIP, spec.JobIP = netip.MustParseAddr("10.213.7.1"), netip.MustParseAddr("10.213.7.2")
	nsPath := testenv.NewNetNS(t, "alk-nftconf")
	peerName := fmt.Sprintf("alkcp%d", os.Getpid()%100000)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: spec.HostIf}, PeerName: peerName}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("adding veth %s: %v", spec.HostIf, err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	peer, err := netlink.LinkByName(peerName)
	if err == nil {
		err = netlink.LinkSetNsFd(peer, int(nsh))
	}
	host, _ := netlink.LinkByName(spec.HostIf)
	if err == nil {
		err = netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: spec.GatewayIP.AsSlice(), Mask: net.CIDRMask(30, 32)}})
	}
	if err == nil {
		err = netlink.LinkSetUp(host)
	}
	if err == nil {
		err = testenv.InNetNS(nsPath, func() error {
			l, err := netlink.LinkByName(peerName)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: spec.JobIP.AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		})
	}
	if err != nil {
		t.Fatalf("plumbing the job's namespace: %v", err)
	}
	serveTCPOn(t, netip.AddrPortFrom(spec.GatewayIP, 3128), func(net.Conn) {}) // a gateway port of the spec
	serveTCPOn(t, netip.AddrPortFrom(spec.GatewayIP, 4444), func(net.Conn) {}) // another port of the host
	dial := func(port int) error {
		return testenv.InNetNS(nsPath, func() error {
			c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", spec.GatewayIP, port), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	// The baseline, once the new link carries (its first packets may be
	// lost while it comes up).
	var base error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if base = dial(4444); base == nil || time.Now().After(deadline) {
			break
		}
	}
	if base != nil {
		t.Fatalf("before the firewall, the host's port 4444 = %v, want it reachable (the baseline)", base)
	}
	fw, err := NewNFTables(hclog.NewNullLogger(), NFTablesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() {
		_ = fw.Remove(ctx, spec)
		_ = fw.Close()
	})
	if err := fw.Apply(ctx, spec); err != nil {
		t.Fatalf("Apply() = %v", err)
	}
	if err := dial(3128); err != nil {
		t.Errorf("the gateway's port 3128 = %v, want it reachable", err)
	}
	if err := dial(4444); err == nil {
		t.Errorf("the host's port 4444 is reachable from the job with the host's chain in place")
	}
}
