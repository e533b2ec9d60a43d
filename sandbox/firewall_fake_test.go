package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
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

// gatedFirewall is a Firewall whose Apply waits for release, counting
// the Applies in flight; Backend says which backend it stands for.
type gatedFirewall struct {
	recordingFirewall
	backend  string
	release  chan struct{}
	mu       sync.Mutex
	inFlight int
	most     int
}

func (f *gatedFirewall) Backend() string { return f.backend }

func (f *gatedFirewall) Apply(ctx context.Context, spec netpolicy.FirewallSpec) error {
	f.mu.Lock()
	f.inFlight++
	f.most = max(f.most, f.inFlight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	select {
	case <-f.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return f.recordingFirewall.Apply(ctx, spec)
}

func (f *gatedFirewall) counts() (inFlight, most int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFlight, f.most
}

// With native nftables (work on this process's CPUs) at most one setup
// per CPU runs at once and the others wait their turn; a setup whose
// context ends while it waits fails, naming the wait, and leaves nothing.
// With iptables (work in child processes) all run at once.
func TestSetupSlots(t *testing.T) {
	testenv.RequireRoot(t)
	cpus := runtime.NumCPU()
	for _, tc := range []struct {
		backend string
		want    int
	}{{netpolicy.FirewallNFTables, cpus}, {netpolicy.FirewallIPTables, cpus + 2}} {
		t.Run(tc.backend, func(t *testing.T) {
			runner := uniqueRunnerID()
			fw := &gatedFirewall{recordingFirewall: *newRecordingFirewall(), backend: tc.backend, release: make(chan struct{})}
			poolFile := filepath.Join(t.TempDir(), "netpool.json")
			m, err := NewManager(Config{RunnerID: runner, Pool: privatePool, PoolFile: poolFile, Firewall: fw, Logger: testLogger()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { assertNothingLeft(t, runner) })
			n := cpus + 2
			nets := make([]*Network, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				ns := testenv.NewNetNS(t, "airlock-slot")
				wg.Go(func() { nets[i], errs[i] = m.Setup(context.Background(), fmt.Sprint("slot-", i), ns) })
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				if in, _ := fw.counts(); in >= tc.want || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			// Those waiting for a slot have had time to (wrongly) start.
			time.Sleep(100 * time.Millisecond)
			if in, _ := fw.counts(); in != tc.want {
				t.Errorf("%d setups in their firewall's Apply at once, want %d", in, tc.want)
			}
			if tc.backend == netpolicy.FirewallNFTables {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				_, err := m.Setup(ctx, "slot-cancelled", testenv.NewNetNS(t, "airlock-slot"))
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for a setup slot") {
					t.Errorf("Setup cancelled while waiting = %v, want a deadline error naming the wait", err)
				}
				for _, a := range readPool(t, poolFile) {
					if a.JobID == "slot-cancelled" {
						t.Errorf("a setup cancelled before its slot holds %s", a.Prefix)
					}
				}
			}
			close(fw.release)
			wg.Wait()
			if _, most := fw.counts(); most != tc.want {
				t.Errorf("at most %d setups in Apply at once, want %d", most, tc.want)
			}
			for i, n := range nets {
				if errs[i] != nil {
					t.Errorf("Setup %d: %v", i, errs[i])
					continue
				}
				if err := n.Teardown(context.Background()); err != nil {
					t.Errorf("Teardown %d: %v", i, err)
				}
			}
		})
	}
}
