package sandbox

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/netpolicy"
)

// Gateway ports used by the tests.
const (
	proxyPort       = 3128
	dnsPort         = 53
	transparentHTTP = 3129
	transparentTLS  = 3130
)

var runnerSeq atomic.Int64

// uniqueRunnerID returns a runner id no other test process uses, so that
// parallel test processes never sweep each other.
func uniqueRunnerID() string {
	return fmt.Sprintf("test-%d-%d-%d", os.Getpid(), time.Now().UnixNano(), runnerSeq.Add(1))
}

func newFirewall(t testing.TB) *netpolicy.Firewall {
	t.Helper()
	fw, err := netpolicy.NewFirewall(testLogger())
	if err != nil {
		t.Fatalf("NewFirewall() error = %v", err)
	}
	return fw
}

// firewallBackends are the packet filters the isolation tests run against.
var firewallBackends = []string{netpolicy.FirewallIPTables, netpolicy.FirewallNFTables}

// newBackend returns a firewall of the named backend, closed at cleanup.
func newBackend(t testing.TB, backend string) Firewall {
	t.Helper()
	if backend == netpolicy.FirewallIPTables {
		return newFirewall(t)
	}
	fw, err := netpolicy.NewNFTables(testLogger())
	if err != nil {
		t.Fatalf("NewNFTables() error = %v", err)
	}
	t.Cleanup(func() { fw.Close() })
	return fw
}

// privatePool is the prefix of tests that use a pool file of their own:
// the default prefix belongs to the host's shared pool file, which other
// airlock processes (and other test packages running in parallel) use.
var privatePool = netip.MustParsePrefix("10.214.0.0/16")

// newManager returns a Manager with its own runner id; at cleanup it
// asserts that nothing of the runner is left on the host. With no
// poolFile it uses the host's shared pool, as every airlock process does;
// with one, it allocates from privatePool.
func newManager(t testing.TB, runnerID, poolFile string) *Manager {
	t.Helper()
	return newManagerFW(t, runnerID, poolFile, newFirewall(t))
}

// newManagerFW is newManager with the given firewall.
func newManagerFW(t testing.TB, runnerID, poolFile string, fw Firewall) *Manager {
	t.Helper()
	pool := netip.Prefix{}
	if poolFile != "" {
		pool = privatePool
	}
	m, err := NewManager(Config{
		RunnerID:        runnerID,
		Pool:            pool,
		PoolFile:        poolFile,
		Firewall:        fw,
		TCPPorts:        []uint16{dnsPort, proxyPort},
		UDPPorts:        []uint16{dnsPort},
		TransparentHTTP: transparentHTTP,
		TransparentTLS:  transparentTLS,
		Logger:          testLogger(),
	})
	if err != nil {
		t.Fatalf("NewManager() error = %v", err)
	}
	t.Cleanup(func() { assertNothingLeft(t, runnerID) })
	return m
}

// setup sets up a sandbox in a fresh namespace, torn down at cleanup.
func setup(t testing.TB, m *Manager, jobID string) *Network {
	t.Helper()
	ns := testenv.NewNetNS(t, "airlock-sbx")
	n, err := m.Setup(context.Background(), jobID, ns)
	if err != nil {
		t.Fatalf("Setup(%q) error = %v", jobID, err)
	}
	t.Cleanup(func() {
		if err := n.Teardown(context.Background()); err != nil {
			t.Errorf("Teardown(%q) error = %v", jobID, err)
		}
	})
	return n
}

// leftovers lists the links, iptables and ip6tables lines that carry the
// runner's tag or id.
func leftovers(t testing.TB, runnerID string) []string {
	t.Helper()
	tag := netpolicy.RunnerTag(runnerID)
	return testenv.Leftovers{Marks: []string{netpolicy.HostIfPrefix + tag, netpolicy.ChainPrefix + tag, "runner=" + runnerID + " "}}.List(t)
}

func assertNothingLeft(t testing.TB, runnerID string) {
	t.Helper()
	if l := leftovers(t, runnerID); len(l) > 0 {
		t.Errorf("resources of runner %s left on the host:\n%s", runnerID, strings.Join(l, "\n"))
	}
}

// testLogger logs to stderr at the level AIRLOCK_TEST_LOG names (e.g.
// "debug" shows Setup's phase timings), and nothing by default.
func testLogger() hclog.Logger {
	lvl := os.Getenv("AIRLOCK_TEST_LOG")
	if lvl == "" {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Level: hclog.LevelFromString(lvl), Output: os.Stderr})
}
