package hostcheck

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// TestRunRealHost runs every check against this host. The test machines
// have root, network namespaces, iptables and Docker, so those checks must
// pass; the others depend on the machine and are only logged.
func TestRunRealHost(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.toml")
	state := filepath.Join(dir, "state")
	body := "state_dir = \"" + state + "\"\n[docker]\nhost = \"unix://" + testenv.DockerSocket() + "\"\n"
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "state.key"), make([]byte, 32), 0o600); err != nil {
		t.Fatal(err)
	}

	rs := Run(context.Background(), NewEnv(), Options{
		ConfigPath: cfgPath,
		KeyFiles:   []string{"state.key", "audit.key"},
		TestImage:  TestImage,
	})
	got := map[string]Result{}
	for _, r := range rs {
		t.Logf("%-4s %-18s %s | %s", r.Status, r.Name, r.Detail, r.Fix)
		got[r.Name] = r
	}
	for _, name := range []string{"config", "root", "network namespaces", "veth", "ping_group_range",
		"iptables tools", "firewall", "docker", "state dir", "state.key", "audit.key"} {
		r, ok := got[name]
		if !ok {
			t.Errorf("no %q result", name)
			continue
		}
		if r.Status != OK {
			t.Errorf("%s: %v %s (fix: %s), want OK on the test machines", name, r.Status, r.Detail, r.Fix)
		}
	}
	if r := got["ipv6 sysctls"]; r.Status != OK && r.Status != Info {
		t.Errorf("ipv6 sysctls: %v %s, want OK or INFO", r.Status, r.Detail)
	}
	if r := got["iptables backend"]; r.Status == Fail {
		t.Errorf("iptables backend: %v %s: the test machine's iptables does not match Docker's", r.Status, r.Detail)
	}
	for _, name := range []string{probeVeth, probeVethPeer} {
		if l, err := netlink.LinkByName(name); err == nil {
			t.Errorf("probe link %s (index %d) left on the host", name, l.Attrs().Index)
		}
	}
}

// TestProbeNetNSLeavesNothing runs the real probe repeatedly and checks
// that it touched nothing on the host. (Other tests may add links to the
// host meanwhile, so it looks for the probe's names, not a link count.)
func TestProbeNetNSLeavesNothing(t *testing.T) {
	testenv.RequireRoot(t)
	const pgr = "/proc/sys/net/ipv4/ping_group_range"
	pgrBefore, err := os.ReadFile(pgr)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		p := probeNetNS(context.Background())
		if p.NetNS != nil || p.Veth != nil || p.PingGroupRange != nil {
			t.Fatalf("probeNetNS() = %+v, want no errors", p)
		}
	}
	for _, name := range []string{probeVeth, probeVethPeer} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("probe link %s left on the host", name)
		}
	}
	// The host's own ping_group_range is untouched.
	pgrAfter, err := os.ReadFile(pgr)
	if err != nil {
		t.Fatal(err)
	}
	if string(pgrAfter) != string(pgrBefore) {
		t.Errorf("host ping_group_range = %q after the probes, was %q", pgrAfter, pgrBefore)
	}
}
