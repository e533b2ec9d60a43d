package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/airlock-ci/airlock/internal/testenv"
)

var benchNS atomic.Int64

// newBenchNS creates a named namespace (standing in for a container's) and
// returns its path and a function deleting it.
func newBenchNS(b *testing.B) (string, func()) {
	name := fmt.Sprintf("airlock-bench-%d-%d", time.Now().UnixNano()%1e9, benchNS.Add(1))
	if err := testenv.CreateNamedNS(name); err != nil {
		b.Fatalf("creating namespace: %v", err)
	}
	path := filepath.Join("/var/run/netns", name)
	// What the engine does in every Docker job container before Airlock
	// plumbs it: the sysctls the executor asks for (HostConfig.Sysctls),
	// and lo up.
	if err := testenv.InNetNS(path, func() error {
		if err := writeSysctls(map[string]string{
			"net/ipv6/conf/all/disable_ipv6":     "1",
			"net/ipv6/conf/default/disable_ipv6": "1",
			"net/ipv4/ping_group_range":          "1 0",
		}); err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		b.Fatalf("namespace sysctls: %v", err)
	}
	return path, func() {
		if err := netns.DeleteNamed(name); err != nil {
			b.Errorf("deleting namespace %s: %v", name, err)
		}
	}
}

// BenchmarkSetup measures a job's network setup — address allocation,
// veth, addresses, sysctls and firewall (host and namespace rule sets) —
// in a namespace made just before (as a container's is), then tears down,
// with each firewall backend. It reports setup and teardown latency
// percentiles, and setup with the namespace's creation.
func BenchmarkSetup(b *testing.B) {
	testenv.RequireRoot(b)
	for _, backend := range firewallBackends {
		for _, workers := range []int{1, 16} {
			name := "serial"
			if workers > 1 {
				name = fmt.Sprintf("parallel=%d", workers)
			}
			b.Run(backend+"/"+name, func(b *testing.B) { benchSetup(b, backend, workers) })
		}
		b.Run(backend+"/burst=16", func(b *testing.B) { benchBurst(b, backend, 16) })
		b.Run(backend+"/burst=1", func(b *testing.B) { benchBurst(b, backend, 1) })
	}
}

// benchPoolFile is a pool file where a host keeps it: /run is tmpfs on a
// systemd host (here it may be a disk, whose fsyncs a host does not pay).
func benchPoolFile(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "airlock-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "netpool.json")
}

// benchBurst measures "n jobs at once": n namespaces exist (as n
// containers just started), then n setups start together; each one's
// latency is recorded, then the n are torn down together (reported
// separately). parallel=16 above is the sustained variant: 16 workers in a
// closed loop of namespace creation, setup, teardown and deletion.
func benchBurst(b *testing.B, backend string, n int) {
	m := newManagerFW(b, uniqueRunnerID(), benchPoolFile(b), newBackend(b, backend))
	var setups, teardowns []time.Duration
	var mu sync.Mutex
	var busy time.Duration
	rounds := (b.N + n - 1) / n
	b.ResetTimer()
	for r := range rounds {
		b.StopTimer()
		paths := make([]string, n)
		dels := make([]func(), n)
		for i := range n {
			paths[i], dels[i] = newBenchNS(b)
		}
		nets := make([]*Network, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				t0 := time.Now()
				nw, err := m.Setup(context.Background(), fmt.Sprintf("burst-%d-%d", r, i), paths[i])
				d := time.Since(t0)
				if err != nil {
					b.Errorf("Setup() error = %v", err)
					return
				}
				nets[i] = nw
				mu.Lock()
				setups = append(setups, d)
				mu.Unlock()
			})
		}
		b.StartTimer()
		cpu0 := cpuTime(b)
		close(start)
		wg.Wait()
		busy += cpuTime(b) - cpu0
		for i := range n {
			wg.Go(func() {
				if nets[i] == nil {
					return
				}
				t0 := time.Now()
				if err := nets[i].Teardown(context.Background()); err != nil {
					b.Errorf("Teardown() error = %v", err)
				}
				mu.Lock()
				teardowns = append(teardowns, time.Since(t0))
				mu.Unlock()
			})
		}
		wg.Wait()
		b.StopTimer()
		for _, del := range dels {
			del()
		}
		// The kernel frees deleted namespaces in the background (holding
		// the rtnl lock): the next burst starts once that has settled, as
		// a burst of jobs on a host does not follow one a few ms earlier.
		time.Sleep(300 * time.Millisecond)
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(percentileMS(setups, 50), "setup-p50-ms")
	b.ReportMetric(percentileMS(setups, 95), "setup-p95-ms")
	b.ReportMetric(percentileMS(teardowns, 50), "teardown-p50-ms")
	// The CPU the setups cost, per setup (the process's; kernel workers
	// finishing the work asynchronously come on top): with c cores, n
	// setups at once cannot all end before n × this / c.
	if len(setups) > 0 {
		b.ReportMetric(float64(busy.Microseconds())/1000/float64(len(setups)), "cpu-ms/setup")
	}
}

// cpuTime is the CPU the test process has used so far, its kernel
// time included (the setups' netlink and sysctl work runs in their own
// syscalls). Exact, unlike /proc/stat's ticks.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchSetup(b *testing.B, backend string, workers int) {
	m := newManagerFW(b, uniqueRunnerID(), benchPoolFile(b), newBackend(b, backend))
	var mu sync.Mutex
	var setups, teardowns, withNSs []time.Duration
	var seq atomic.Int64
	work := make(chan struct{})
	var wg sync.WaitGroup
	b.ResetTimer()
	for range workers {
		wg.Go(func() {
			for range work {
				i := seq.Add(1)
				start := time.Now()
				path, del := newBenchNS(b)
				nsMade := time.Now()
				n, err := m.Setup(context.Background(), fmt.Sprint("bench-", i), path)
				setup, withNS := time.Since(nsMade), time.Since(start)
				if err != nil {
					b.Errorf("Setup() error = %v", err)
					del()
					continue
				}
				start = time.Now()
				if err := n.Teardown(context.Background()); err != nil {
					b.Errorf("Teardown() error = %v", err)
				}
				del()
				td := time.Since(start)
				mu.Lock()
				setups, teardowns = append(setups, setup), append(teardowns, td)
				withNSs = append(withNSs, withNS)
				mu.Unlock()
			}
		})
	}
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(percentileMS(setups, 50), "setup-p50-ms")
	b.ReportMetric(percentileMS(setups, 95), "setup-p95-ms")
	b.ReportMetric(percentileMS(teardowns, 50), "teardown-p50-ms")
	// With the namespace's creation: Docker makes it as part of the
	// container's start (which a bare docker run pays too); with
	// containerd, Airlock makes it before the task.
	b.ReportMetric(percentileMS(withNSs, 50), "with-netns-p50-ms")
	b.ReportMetric(percentileMS(withNSs, 95), "with-netns-p95-ms")
}

func percentileMS(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	i := (len(d)*p + 99) / 100
	if i > 0 {
		i--
	}
	return float64(d[i]) / float64(time.Millisecond)
}
