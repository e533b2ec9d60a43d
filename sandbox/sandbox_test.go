package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/netpolicy"
)

func TestSetupConfiguresBothEnds(t *testing.T) {
	testenv.RequireRoot(t)
	runner := uniqueRunnerID()
	m := newManager(t, runner, "")
	n := setup(t, m, "job-1")

	if got, want := n.HostIf, netpolicy.HostIfName(runner, "job-1"); got != want || len(got) > 15 {
		t.Errorf("HostIf = %q, want %q (at most 15 characters)", got, want)
	}
	if n.GatewayIP.Next() != n.JobIP || n.Prefix.Bits() != 30 || n.Prefix.Addr().Next() != n.GatewayIP {
		t.Errorf("addresses = prefix %v gateway %v job %v, want gateway .1 and job .2 of a /30", n.Prefix, n.GatewayIP, n.JobIP)
	}
	link, err := netlink.LinkByName(n.HostIf)
	if err != nil {
		t.Fatalf("LinkByName(%q) error = %v", n.HostIf, err)
	}
	if got, want := link.Attrs().Alias, "airlock runner="+runner+" job=job-1"; got != want {
		t.Errorf("alias of %s = %q, want %q", n.HostIf, got, want)
	}
	// Asked for in the request: a veth made with one queue per CPU is cut
	// to one afterwards, waiting for an RCU grace period under rtnl.
	if a := link.Attrs(); a.NumTxQueues != 1 || a.NumRxQueues != 1 {
		t.Errorf("veth %s has %d tx / %d rx queues, want 1 / 1 (made so, not cut down)", n.HostIf, a.NumTxQueues, a.NumRxQueues)
	}
	hostSysctls := map[string]string{
		"net/ipv6/conf/" + n.HostIf + "/disable_ipv6": "1",
		"net/ipv4/conf/" + n.HostIf + "/rp_filter":    "1",
	}
	for k, want := range hostSysctls {
		if got := readSysctl(t, k); got != want {
			t.Errorf("host sysctl %s = %q, want %q", k, got, want)
		}
	}
	nsSysctls := map[string]string{
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv6/conf/default/disable_ipv6": "1",
		"net/ipv6/conf/eth0/disable_ipv6":    "1",
		"net/ipv4/ping_group_range":          "1\t0",
	}
	err = testenv.InNetNS(n.NetNS, func() error {
		for k, want := range nsSysctls {
			if got := readSysctl(t, k); got != want {
				t.Errorf("namespace sysctl %s = %q, want %q", k, got, want)
			}
		}
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		found := false
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(n.GatewayIP.AsSlice()) {
				found = true
			}
		}
		if !found {
			t.Errorf("no default route via %s in the namespace: %v", n.GatewayIP, routes)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inspecting namespace: %v", err)
	}
}

func readSysctl(t testing.TB, key string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Fatalf("reading sysctl %s: %v", key, err)
	}
	return strings.TrimSpace(string(b))
}

func TestTeardownIsIdempotentAndLeavesNothing(t *testing.T) {
	testenv.RequireRoot(t)
	runner := uniqueRunnerID()
	// A pool of its own: in the host's, another package's job may take
	// the released /30 before the second Setup asks for the lowest free.
	m := newManager(t, runner, filepath.Join(t.TempDir(), "netpool.json"))
	ns := testenv.NewNetNS(t, "airlock-sbx")
	n, err := m.Setup(context.Background(), "job-td", ns)
	if err != nil {
		t.Fatalf("Setup() error = %v", err)
	}
	if l := leftovers(t, runner); len(l) == 0 {
		t.Fatalf("after Setup no resources carry the runner tag; the leftover check would prove nothing")
	}
	for i := range 2 {
		if err := n.Teardown(context.Background()); err != nil {
			t.Fatalf("Teardown() #%d error = %v", i+1, err)
		}
	}
	assertNothingLeft(t, runner)
	allocs, err := m.pool.snapshot()
	if err != nil {
		t.Fatalf("reading pool: %v", err)
	}
	for _, a := range allocs {
		if a.RunnerID == runner {
			t.Errorf("pool after Teardown holds %v of this runner, want none", a)
		}
	}
	// The /30 is free again.
	n2, err := m.Setup(context.Background(), "job-td2", ns)
	if err != nil {
		t.Fatalf("Setup() after Teardown error = %v", err)
	}
	if n2.Prefix != n.Prefix {
		t.Errorf("Setup() after Teardown got %v, want the released %v", n2.Prefix, n.Prefix)
	}
	if err := n2.Teardown(context.Background()); err != nil {
		t.Fatalf("Teardown() error = %v", err)
	}
}

func TestSetupFailureCleansUp(t *testing.T) {
	testenv.RequireRoot(t)
	runner := uniqueRunnerID()
	m := newManager(t, runner, "")
	for _, ns := range []string{"/nonexistent/netns", testenv.HostNetNS()} {
		if _, err := m.Setup(context.Background(), "job-bad", ns); err == nil {
			t.Errorf("Setup() in namespace %s succeeded, want an error", ns)
		}
	}
	allocs, err := m.pool.snapshot()
	if err != nil {
		t.Fatalf("reading pool: %v", err)
	}
	// The pool is the host's shared one: other processes' jobs may be in
	// it; none of this runner's may.
	for _, a := range allocs {
		if a.RunnerID == runner {
			t.Errorf("pool after failed Setup holds %+v, want nothing of runner %s", a, runner)
		}
	}
}

func TestSetupRefusesADuplicateJob(t *testing.T) {
	testenv.RequireRoot(t)
	m := newManager(t, uniqueRunnerID(), "")
	n := setup(t, m, "job-dup")
	ns := testenv.NewNetNS(t, "airlock-sbx")
	if _, err := m.Setup(context.Background(), "job-dup", ns); err == nil || !strings.Contains(err.Error(), "already allocated") {
		t.Fatalf("second Setup(job-dup) error = %v, want already allocated", err)
	}
	if _, err := netlink.LinkByName(n.HostIf); err != nil {
		t.Errorf("first sandbox's veth after the refused Setup: %v", err)
	}
}

// TestSetupPassesOverAddressesTheHostHas runs two runners of one pool
// prefix with pool files of their own: neither file knows the other's
// /30, so the second must see the first's address on the host and take
// the next one, or its job's route would lead to the first job's veth.
func TestSetupPassesOverAddressesTheHostHas(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	m1 := newManager(t, uniqueRunnerID(), filepath.Join(dir, "a.json"))
	m2 := newManager(t, uniqueRunnerID(), filepath.Join(dir, "b.json"))
	n1 := setup(t, m1, "job-a")
	n2 := setup(t, m2, "job-b")
	if n1.Prefix.Overlaps(n2.Prefix) {
		t.Fatalf("runners with separate pool files got %v and %v", n1.Prefix, n2.Prefix)
	}
	link, err := netlink.LinkByName(n2.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := netlink.RouteGet(n2.JobIP.AsSlice())
	if err != nil || len(routes) == 0 {
		t.Fatalf("RouteGet(%v) = %v, %v", n2.JobIP, routes, err)
	}
	if routes[0].LinkIndex != link.Attrs().Index {
		t.Errorf("the route to job-b's %v leaves by link %d, not job-b's veth %s (%d)", n2.JobIP, routes[0].LinkIndex, n2.HostIf, link.Attrs().Index)
	}
}
