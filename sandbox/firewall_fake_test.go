package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/procs"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/netpolicy"
)

// recordingFirewall is a Firewall that records its calls and fails the
// ones a test asks it to (tailscale's fakeIPTablesRunner idea): sandbox's
// error paths without a real packet filter, and Sweep's without root.
type recordingFirewall struct {
	mu    sync.Mutex
	calls []string
	// failures: method name ("Apply", "Remove", "Sweep") -> how many of
	// the next calls fail.
	failures map[string]int
	keep     func(jobTag string) bool // the last Sweep's
}

var errInjected = errors.New("injected firewall failure")

func newRecordingFirewall() *recordingFirewall {
	return &recordingFirewall{failures: map[string]int{}}
}

func (f *recordingFirewall) failNext(method string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[method] = n
}

func (f *recordingFirewall) call(method, what string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method+" "+what)
	if f.failures[method] > 0 {
		f.failures[method]--
		return errInjected
	}
	return nil
}

func (f *recordingFirewall) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *recordingFirewall) Apply(_ context.Context, spec netpolicy.FirewallSpec) error {
	return f.call("Apply", spec.HostIf)
}

func (f *recordingFirewall) Remove(_ context.Context, spec netpolicy.FirewallSpec) error {
	return f.call("Remove", spec.HostIf)
}

func (f *recordingFirewall) Sweep(_ context.Context, runnerID string, keep func(string) bool) error {
	f.mu.Lock()
	f.keep = keep
	f.mu.Unlock()
	return f.call("Sweep", runnerID)
}

var _ Firewall = (*recordingFirewall)(nil)

// fakeManager is a Manager on the recording firewall with a pool file of
// its own; it needs no root.
func fakeManager(t *testing.T, runnerID string) (*Manager, *recordingFirewall, string) {
	t.Helper()
	fw := newRecordingFirewall()
	poolFile := filepath.Join(t.TempDir(), "netpool.json")
	m, err := NewManager(Config{
		RunnerID: runnerID, Pool: privatePool, PoolFile: poolFile, Firewall: fw,
		TCPPorts: []uint16{dnsPort, proxyPort}, UDPPorts: []uint16{dnsPort}, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return m, fw, poolFile
}

func writePool(t *testing.T, path string, allocs ...allocation) {
	t.Helper()
	b, err := json.Marshal(poolState{Allocations: allocs})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readPool(t *testing.T, path string) []allocation {
	t.Helper()
	var st poolState
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.Allocations
}

// Sweep without root: the firewall is told which jobs are live, dead
// allocations are released, temp files of interrupted pool writes are
// removed; a firewall Sweep failure is reported and the dead allocations
// are kept for the next sweep.
func TestSweepOnRecordingFirewall(t *testing.T) {
	runner := uniqueRunnerID()
	m, fw, poolFile := fakeManager(t, runner)
	self, err := procs.Self()
	if err != nil {
		t.Fatal(err)
	}
	rtag := netpolicy.RunnerTag(runner)
	liveIf := netpolicy.HostIfPrefix + rtag + netpolicy.JobTag("live")
	deadIf := netpolicy.HostIfPrefix + rtag + netpolicy.JobTag("dead")
	otherIf := netpolicy.HostIfPrefix + netpolicy.RunnerTag("other") + netpolicy.JobTag("dead")
	now := time.Now()
	writePool(t, poolFile,
		allocation{Prefix: netip.MustParsePrefix("10.214.0.0/30"), RunnerID: runner, JobID: "live", PID: self.PID, PIDStart: self.Start, HostIf: liveIf, Time: now},
		allocation{Prefix: netip.MustParsePrefix("10.214.0.4/30"), RunnerID: runner, JobID: "dead", PID: 1 << 22, PIDStart: 1, HostIf: deadIf, Time: now},
		allocation{Prefix: netip.MustParsePrefix("10.214.0.8/30"), RunnerID: "other", JobID: "dead", PID: 1 << 22, PIDStart: 1, HostIf: otherIf, Time: now},
	)
	tmps := []string{
		filepath.Join(filepath.Dir(poolFile), ".netpool.json.tmp-0123abcd"),
		poolFile + ".tmp4711", // an older version's temp name
	}
	for _, f := range tmps {
		if err := os.WriteFile(f, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	fw.failNext("Sweep", 1)
	err = m.Sweep(context.Background())
	if !errors.Is(err, errInjected) {
		t.Fatalf("Sweep with a failing firewall = %v, want the firewall's error", err)
	}
	if got := len(readPool(t, poolFile)); got != 3 {
		t.Errorf("after a failed sweep %d allocations are left, want all 3 (retried next time)", got)
	}

	if err := m.Sweep(context.Background()); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if fw.keep == nil || !fw.keep(netpolicy.JobTag("live")) || fw.keep(netpolicy.JobTag("dead")) {
		t.Errorf("the firewall's keep does not hold exactly the live job")
	}
	var jobs []string
	for _, a := range readPool(t, poolFile) {
		jobs = append(jobs, a.RunnerID+"/"+a.JobID)
	}
	if got := strings.Join(jobs, ","); got != runner+"/live,other/dead" {
		t.Errorf("allocations after the sweep = %s, want the live job's and the other runner's", got)
	}
	for _, f := range tmps {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left after the sweep", filepath.Base(f))
		}
	}
}

// Setup whose firewall Apply fails returns the error and leaves nothing:
// no veth, no allocation. Teardown whose Remove fails reports it and keeps
// the allocation; a second Teardown finishes the job.
func TestSetupTeardownFirewallFailures(t *testing.T) {
	testenv.RequireRoot(t)
	runner := uniqueRunnerID()
	m, fw, poolFile := fakeManager(t, runner)
	t.Cleanup(func() { assertNothingLeft(t, runner) })

	fw.failNext("Apply", 1)
	ns := testenv.NewNetNS(t, "airlock-fwf")
	if _, err := m.Setup(context.Background(), "apply-fails", ns); !errors.Is(err, errInjected) {
		t.Fatalf("Setup with a failing Apply = %v, want the firewall's error", err)
	}
	if l := leftovers(t, runner); len(l) > 0 {
		t.Errorf("a failed Setup left:\n%s", strings.Join(l, "\n"))
	}
	if a := readPool(t, poolFile); len(a) != 0 {
		t.Errorf("a failed Setup left allocations %+v", a)
	}

	n, err := m.Setup(context.Background(), "remove-fails", testenv.NewNetNS(t, "airlock-fwf"))
	if err != nil {
		t.Fatal(err)
	}
	fw.failNext("Remove", 1)
	if err := n.Teardown(context.Background()); !errors.Is(err, errInjected) {
		t.Errorf("Teardown with a failing Remove = %v, want the firewall's error", err)
	}
	if a := readPool(t, poolFile); len(a) != 1 {
		t.Errorf("allocations after a failed Teardown = %d, want it kept until the rules are gone", len(a))
	}
	if err := n.Teardown(context.Background()); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if a := readPool(t, poolFile); len(a) != 0 {
		t.Errorf("allocations after the second Teardown = %+v", a)
	}
	calls := strings.Join(fw.Calls(), "\n")
	if strings.Count(calls, "Apply ") != 2 || strings.Count(calls, "Remove ") < 2 {
		t.Errorf("firewall calls:\n%s", calls)
	}
}
