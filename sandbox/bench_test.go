package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	return filepath.Join("/var/run/netns", name), func() {
		if err := netns.DeleteNamed(name); err != nil {
			b.Errorf("deleting namespace %s: %v", name, err)
		}
	}
}

// BenchmarkSetup measures namespace creation + veth + addresses + sysctls
// + firewall (host and namespace rule sets), then tears down. It reports
// setup and teardown latency percentiles.
func BenchmarkSetup(b *testing.B) {
	testenv.RequireRoot(b)
	for _, workers := range []int{1, 16} {
		name := "serial"
		if workers > 1 {
			name = fmt.Sprintf("parallel=%d", workers)
		}
		b.Run(name, func(b *testing.B) {
			m := newManager(b, uniqueRunnerID(), "")
			var mu sync.Mutex
			var setups, teardowns []time.Duration
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
						n, err := m.Setup(context.Background(), fmt.Sprint("bench-", i), path)
						setup := time.Since(start)
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
		})
	}
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
