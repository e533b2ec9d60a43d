package sandbox

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/airlock-ci/airlock/internal/procs"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/netpolicy"
)

// Environment of the helper process (this test binary re-executed).
const (
	helperEnv       = "AIRLOCK_SANDBOX_HELPER"
	helperPoolEnv   = "AIRLOCK_SANDBOX_HELPER_POOL"
	helperRunnerEnv = "AIRLOCK_SANDBOX_HELPER_RUNNER"
	helperCountEnv  = "AIRLOCK_SANDBOX_HELPER_COUNT"
)

// TestHelperProcess is not a test: it is the body of the helper process
// started by the tests below, selected by AIRLOCK_SANDBOX_HELPER:
//
//	alloc: allocate COUNT /30s concurrently, print them, exit (no release)
//	setup: set up COUNT sandboxes concurrently, print their prefixes, wait
//	       for stdin to close, tear down
//	leak:  set up one sandbox, print "leak HOSTIF NETNS", exit without
//	       teardown (a crashed runner)
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	poolFile, runner := os.Getenv(helperPoolEnv), os.Getenv(helperRunnerEnv)
	count, _ := strconv.Atoi(os.Getenv(helperCountEnv))
	switch mode {
	case "alloc":
		p, err := newPool(netip.MustParsePrefix(DefaultPool), poolFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, pr := range allocateConcurrently(t, p, runner, count) {
			fmt.Println("prefix", pr)
		}
	case "setup":
		m := newHelperManager(t, runner, poolFile)
		nets := setupConcurrently(t, m, count)
		for _, n := range nets {
			fmt.Println("prefix", n.Prefix)
		}
		fmt.Println("ready")
		_, _ = io.Copy(io.Discard, os.Stdin)
	case "leak":
		m := newHelperManager(t, runner, poolFile)
		n := setup(t, m, "job-leaked")
		fmt.Println("leak", n.HostIf, n.NetNS)
		os.Exit(0)
	default:
		t.Fatalf("unknown helper mode %q", mode)
	}
}

func newHelperManager(t *testing.T, runner, poolFile string) *Manager {
	t.Helper()
	m, err := NewManager(Config{RunnerID: runner, Pool: privatePool, PoolFile: poolFile, Firewall: newFirewall(t),
		TCPPorts: []uint16{proxyPort}, UDPPorts: []uint16{dnsPort}, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// startHelper starts the helper process; its stdout lines are returned
// on a channel. Closing stdin (the returned writer) lets a "setup" helper
// tear down.
func startHelper(t *testing.T, mode, runner, poolFile string, count int) (lines <-chan string, stdin io.WriteCloser, wait func() error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperPoolEnv+"="+poolFile,
		helperRunnerEnv+"="+runner, helperCountEnv+"="+strconv.Itoa(count))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting helper process: %v", err)
	}
	ch := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	var once sync.Once
	var werr error
	wait = func() error {
		once.Do(func() { in.Close(); <-done; werr = cmd.Wait() })
		return werr
	}
	t.Cleanup(func() { _ = wait() })
	return ch, in, wait
}

func allocateConcurrently(t testing.TB, p *pool, runner string, count int) []netip.Prefix {
	t.Helper()
	start, err := procs.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]netip.Prefix, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			pr, err := p.allocate(allocation{RunnerID: runner, JobID: fmt.Sprint("job-", i), PID: os.Getpid(), PIDStart: start,
				HostIf: netpolicy.HostIfName(runner, fmt.Sprint("job-", i)), Time: time.Now()}, nil)
			if err != nil {
				t.Errorf("allocate() error = %v", err)
			}
			out[i] = pr
		})
	}
	wg.Wait()
	return out
}

func setupConcurrently(t *testing.T, m *Manager, count int) []*Network {
	t.Helper()
	nss := make([]string, count)
	for i := range nss {
		nss[i] = testenv.NewNetNS(t, "airlock-sbx")
	}
	nets := make([]*Network, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			n, err := m.Setup(context.Background(), fmt.Sprint("job-", i), nss[i])
			if err != nil {
				t.Errorf("Setup(job-%d) error = %v", i, err)
				return
			}
			nets[i] = n
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, n := range nets {
			if n != nil {
				if err := n.Teardown(context.Background()); err != nil {
					t.Errorf("Teardown(%s) error = %v", n.JobID, err)
				}
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	return nets
}

// collect reads "prefix P" lines until "ready" or EOF.
func collect(t *testing.T, lines <-chan string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for l := range lines {
		if l == "ready" {
			break
		}
		if s, ok := strings.CutPrefix(l, "prefix "); ok {
			out = append(out, netip.MustParsePrefix(s))
		}
	}
	return out
}

func assertDistinct(t *testing.T, prefixes []netip.Prefix, want int) {
	t.Helper()
	seen := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		if seen[p] || !p.IsValid() {
			t.Errorf("prefix %v handed out twice or invalid", p)
		}
		seen[p] = true
	}
	if len(seen) != want {
		t.Errorf("got %d distinct prefixes, want %d", len(seen), want)
	}
}

func TestPoolDistinctAcrossProcesses(t *testing.T) {
	poolFile := filepath.Join(t.TempDir(), "netpool.json")
	p, err := newPool(netip.MustParsePrefix(DefaultPool), poolFile)
	if err != nil {
		t.Fatal(err)
	}
	lines, _, wait := startHelper(t, "alloc", "runner-child", poolFile, 32)
	mine := allocateConcurrently(t, p, "runner-parent", 32)
	theirs := collect(t, lines)
	if err := wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	assertDistinct(t, append(mine, theirs...), 64)
	allocs, err := p.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(allocs) != 64 {
		t.Errorf("pool holds %d allocations, want 64", len(allocs))
	}
}

func TestConcurrentSetupGetsDistinctSubnets(t *testing.T) {
	testenv.RequireRoot(t)
	poolFile := filepath.Join(t.TempDir(), "netpool.json")
	m := newManager(t, uniqueRunnerID(), poolFile)
	childRunner := uniqueRunnerID()
	t.Cleanup(func() { assertNothingLeft(t, childRunner) })
	lines, _, wait := startHelper(t, "setup", childRunner, poolFile, 8)

	nets := setupConcurrently(t, m, 16)
	theirs := collect(t, lines)
	var all []netip.Prefix
	for _, n := range nets {
		all = append(all, n.Prefix)
	}
	assertDistinct(t, all, 16)
	assertDistinct(t, append(all, theirs...), 24)
	if err := wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
}

func TestSweepRemovesDeadLeftoversOnly(t *testing.T) {
	testenv.RequireRoot(t)
	poolFile := filepath.Join(t.TempDir(), "netpool.json")
	runnerA, runnerB := uniqueRunnerID(), uniqueRunnerID()
	mA := newManager(t, runnerA, poolFile)
	mB := newManager(t, runnerB, poolFile)
	live := setup(t, mA, "job-live")

	leak := func(runner string) (hostIf string) {
		lines, _, wait := startHelper(t, "leak", runner, poolFile, 1)
		var line string
		for l := range lines {
			if strings.HasPrefix(l, "leak ") {
				line = l
			}
		}
		if err := wait(); err != nil {
			t.Fatalf("leak helper: %v", err)
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("leak helper printed %q", line)
		}
		t.Cleanup(func() {
			if err := netns.DeleteNamed(filepath.Base(f[2])); err != nil {
				t.Errorf("deleting leaked namespace: %v", err)
			}
		})
		return f[1]
	}
	deadA, deadB := leak(runnerA), leak(runnerB)
	// A live process of the same runner (concurrent airlock exec).
	liveLines, _, liveWait := startHelper(t, "setup", runnerA, poolFile, 1)
	if got := collect(t, liveLines); len(got) != 1 {
		t.Fatalf("live helper set up %d sandboxes, want 1", len(got))
	}
	liveOther := netpolicy.HostIfName(runnerA, "job-0")

	if err := mA.Sweep(context.Background()); err != nil {
		t.Fatalf("Sweep() error = %v", err)
	}
	exists := func(name string) bool { _, err := netlink.LinkByName(name); return err == nil }
	if exists(deadA) {
		t.Errorf("dead process's veth %s survived the sweep", deadA)
	}
	if !exists(liveOther) {
		t.Errorf("sweep removed the veth %s of a live process", liveOther)
	}
	if err := liveWait(); err != nil {
		t.Errorf("live helper: %v", err)
	}
	if !exists(live.HostIf) || !exists(deadB) {
		t.Errorf("sweep of runner A removed a live veth (%s exists %t) or runner B's (%s exists %t)", live.HostIf, exists(live.HostIf), deadB, exists(deadB))
	}
	for _, l := range leftovers(t, runnerA) {
		if strings.Contains(l, netpolicy.JobTag("job-leaked")) {
			t.Errorf("dead job's resource survived the sweep: %s", l)
		}
	}
	if got := len(leftovers(t, runnerB)); got == 0 {
		t.Errorf("sweep of runner A removed runner B's rules")
	}
	allocs, err := mA.pool.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var jobs []string
	for _, a := range allocs {
		jobs = append(jobs, a.RunnerID+"/"+a.JobID)
	}
	if want := []string{runnerA + "/job-live", runnerB + "/job-leaked"}; strings.Join(jobs, ",") != strings.Join(want, ",") {
		t.Errorf("pool after sweep = %v, want %v", jobs, want)
	}
	// The live job still works: its rules are intact.
	if _, err := netlink.LinkByName(live.HostIf); err != nil {
		t.Errorf("live veth: %v", err)
	}
	if err := mB.Sweep(context.Background()); err != nil {
		t.Fatalf("Sweep() of runner B error = %v", err)
	}
	assertNothingLeft(t, runnerB)
}
