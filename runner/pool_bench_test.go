package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/namespaces"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/containerd"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// firstByte records when a marker first appears in what is written.
type firstByte struct {
	mu     sync.Mutex
	marker []byte
	buf    bytes.Buffer
	at     time.Time
}

func (f *firstByte) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at.IsZero() {
		f.buf.Write(p)
		if bytes.Contains(f.buf.Bytes(), f.marker) {
			f.at = time.Now()
		}
	}
	return len(p), nil
}

func (f *firstByte) when() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.at
}

// openBenchRunner opens a fully sandboxed runner (netns, firewall,
// gateway with hosts_only, audit) for the pool benchmarks, closed at
// cleanup with nothing of it left behind. Its executor is the one a
// sub-benchmark of benchEachExecutor names, else Docker.
func openBenchRunner(b *testing.B, log hclog.Logger) *Runner {
	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(b.TempDir(), "state")
	cfg.RuntimeDir = b.TempDir()
	cfg.Docker.Pull = string(executors.PullNever)
	cfg.Docker.Grace = time.Second
	cfg.Docker.StepServer = testenv.StepServer(b)
	if isoExecutor(b) == config.ExecutorContainerd {
		cfg.Executor = config.ExecutorContainerd
		cfg.Containerd = containerd.Config{
			Address:    testenv.ContainerdSocket(),
			Namespace:  testenv.ContainerdNamespace(b),
			Pull:       string(executors.PullNever),
			Grace:      time.Second,
			StepServer: cfg.Docker.StepServer,
		}
	}
	cfg.Gateway.HostsOnly = true
	r, err := openWired(context.Background(), cfg, log)
	if err != nil {
		b.Fatal(err)
	}
	id := r.cfg.RunnerID
	b.Cleanup(func() {
		if err := r.Close(); err != nil {
			b.Errorf("Close() error = %v", err)
		}
		isoAssertNothingLeft(b, id, cfg)
	})
	return r
}

// benchEachExecutor runs fn as a sub-benchmark per executor, "docker" and
// "containerd" (openBenchRunner opens the runner with the one it names).
func benchEachExecutor(b *testing.B, fn func(b *testing.B)) {
	for _, name := range []string{config.ExecutorDocker, config.ExecutorContainerd} {
		b.Run(name, fn)
	}
}

// BenchmarkWarmStart measures, interleaved in one run, the time from a job
// being handed to the runner to the first byte of its step's output: with
// a warm sandbox (pool), cold (container and network made on the job's
// path), and for a bare `docker run --rm --network none` of the same
// command and image (to its first output byte). It reports the medians and
// the ratios warm/docker-run (goal ≤ 0.5) and cold/docker-run; once per
// executor.
func BenchmarkWarmStart(b *testing.B) { benchEachExecutor(b, benchWarmStart) }

func benchWarmStart(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTestImage(b)
	ctx := context.Background()
	r := openBenchRunner(b, isoLogger())
	p, err := r.StartPool(ctx, PoolConfig{Sizes: map[string]int{testenv.TestImage: 1}})
	if err != nil {
		b.Fatal(err)
	}
	const marker = "airlock-bench-output"
	script := []string{"echo " + marker}
	runJob := func(jobID string, warm bool) time.Duration {
		img := testenv.TestImage
		if !warm {
			// The same image under a name the pool does not keep.
			img = testenv.TestImage + "-cold"
		}
		if warm {
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			if err := p.WaitReady(wctx); err != nil {
				b.Fatal(err)
			}
			cancel()
		}
		fb := &firstByte{marker: []byte(marker + "\n")}
		j := &job.Job{ID: jobID, Source: job.SourceLocal, Repo: isoRepo, Image: img, Timeout: time.Minute,
			Steps: []job.Step{{Name: "echo", Script: script, When: job.OnSuccess}}}
		start := time.Now()
		res, err := r.Run(ctx, j, RunOptions{Out: fb})
		if err != nil || res.State != Success {
			b.Fatalf("Run(%s): %v, %+v", jobID, err, res)
		}
		return fb.when().Sub(start)
	}
	dockerRun := func() time.Duration {
		fb := &firstByte{marker: []byte(marker + "\n")}
		cmd := exec.Command("docker", "run", "--rm", "--pull", "never", "--network", "none", testenv.TestImage+"-cold", "sh", "-c", "echo "+marker)
		cmd.Stdout, cmd.Stderr = fb, io.Discard
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("docker run: %v", err)
		}
		return fb.when().Sub(start)
	}
	if out, err := exec.Command("docker", "tag", testenv.TestImage, testenv.TestImage+"-cold").CombinedOutput(); err != nil {
		b.Fatalf("docker tag: %v: %s", err, out)
	}
	b.Cleanup(func() { _ = exec.Command("docker", "rmi", testenv.TestImage+"-cold").Run() })
	runJob("unmeasured-warm", true)
	runJob("unmeasured-cold", false)
	dockerRun()
	n := max(b.N, isoBenchMinJobs)
	var warm, cold, bare []time.Duration
	b.ResetTimer()
	for i := range n {
		warm = append(warm, runJob(fmt.Sprintf("warm-%d", i), true))
		cold = append(cold, runJob(fmt.Sprintf("cold-%d", i), false))
		bare = append(bare, dockerRun())
	}
	b.StopTimer()
	w, c, d := isoPercentileMS(warm, 50), isoPercentileMS(cold, 50), isoPercentileMS(bare, 50)
	b.ReportMetric(w, "warm-first-byte-p50-ms")
	b.ReportMetric(c, "cold-first-byte-p50-ms")
	b.ReportMetric(d, "docker-run-first-byte-p50-ms")
	b.ReportMetric(w/d, "ratio-warm")
	b.ReportMetric(c/d, "ratio-cold")
}

// BenchmarkAgentThroughputPool runs trivial GitLab jobs through the fake
// GitLab at concurrent = 4 on a fully sandboxed runner (Open: netns,
// firewall, gateway, audit), without and then with a pool of 4 warm
// sandboxes, in the same run, and reports jobs per minute of each and
// their ratio (goal ≥ 2), and the agent's heap with the pool full; once
// per executor; and again at concurrent = 1, where the jobs leave this
// host's second core idle for refills.
func BenchmarkAgentThroughputPool(b *testing.B) {
	benchEachExecutor(b, func(b *testing.B) {
		for _, conc := range []int{4, 1} {
			b.Run(fmt.Sprintf("concurrent=%d", conc), func(b *testing.B) { benchAgentThroughputPool(b, conc) })
		}
	})
}

func benchAgentThroughputPool(b *testing.B, conc int) {
	e := newAgentEnv(b)
	ctx := context.Background()
	r := openBenchRunner(b, isoLogger())
	n := max(b.N, 12)
	var busy float64
	perMinute := func() float64 {
		cpu0 := hostCPU(b)
		defer func() { busy = hostCPU(b).busySince(cpu0) }()
		tc := e.config(conc)
		tc.Logger = hclog.NewNullLogger()
		_, stop := startAgent(b, tc, r)
		defer stop()
		start := time.Now()
		ids := make([]int64, n)
		for i := range ids {
			ids[i] = e.gl.Enqueue(gitlabSpec([]string{"true"}, nil))
		}
		for _, id := range ids {
			if st := waitJob(b, e.gl, id, 5*time.Minute); st.Status != "success" {
				b.Fatalf("job %d ended %s, want success", id, st.Status)
			}
		}
		return float64(n) / time.Since(start).Minutes()
	}
	b.ResetTimer()
	off := perMinute()
	busyOff := busy
	// As `airlock run` starts it: refills within concurrent.
	p, err := r.StartPool(ctx, PoolConfig{Sizes: map[string]int{testenv.TestImage: 4}, Concurrent: conc})
	if err != nil {
		b.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := p.WaitReady(wctx); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss := selfRSS(b)
	pooled, pooledBytes := containersMemory(b, r)
	on := perMinute()
	busyOn := busy
	b.StopTimer()
	b.ReportMetric(busyOff, "cpu-busy-cold")
	b.ReportMetric(busyOn, "cpu-busy-warm")
	b.ReportMetric(off, "jobs/min-cold")
	b.ReportMetric(on, "jobs/min-warm")
	b.ReportMetric(on/off, "ratio-warm")
	b.ReportMetric(float64(ms.HeapInuse), "heap-bytes-pool-full")
	b.ReportMetric(float64(rss), "test-process-rss-bytes-pool-full")
	b.ReportMetric(float64(pooled), "pooled-containers")
	b.ReportMetric(float64(pooledBytes)/float64(max(pooled, 1)), "bytes-per-pooled-container")
	b.ReportMetric(float64(p.Stats().Hits), "pool-hits")
}

// selfRSS is this process's resident set (the agent, its fake GitLab and
// the test harness).
func selfRSS(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// containersMemory is the number of the runner's containers and their
// memory use as `docker stats` counts it (usage less inactive page cache):
// from the engine, or from the cgroups of the containerd executor's tasks.
func containersMemory(b *testing.B, r *Runner) (int, int64) {
	runnerID := r.cfg.RunnerID
	if ce, ok := r.exec.(*containerd.Executor); ok {
		return containerdMemory(b, ce, runnerID)
	}
	ctx := context.Background()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	list, err := cli.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", executors.LabelRunner+"="+runnerID))})
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, c := range list {
		st, err := cli.ContainerStatsOneShot(ctx, c.ID)
		if err != nil {
			b.Fatal(err)
		}
		var v container.StatsResponse
		err = json.NewDecoder(st.Body).Decode(&v)
		st.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		use := int64(v.MemoryStats.Usage)
		for _, k := range []string{"total_inactive_file", "inactive_file"} {
			if x, ok := v.MemoryStats.Stats[k]; ok && int64(x) < use {
				use -= int64(x)
				break
			}
		}
		total += use
	}
	return len(list), total
}

// containerdMemory is containersMemory for the containerd executor: each
// of the runner's containers' memory cgroup (v2 memory.current, else v1
// memory.usage_in_bytes) less its inactive file pages.
func containerdMemory(b *testing.B, ce *containerd.Executor, runnerID string) (int, int64) {
	ctx := namespaces.WithNamespace(context.Background(), ce.Namespace())
	list, err := ce.Client().Containers(ctx, fmt.Sprintf("labels.%q==%s", executors.LabelRunner, runnerID))
	if err != nil {
		b.Fatal(err)
	}
	read := func(path string) (int64, bool) {
		data, err := os.ReadFile(path)
		if err != nil {
			return 0, false
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		return v, err == nil
	}
	var total int64
	for _, c := range list {
		dir := filepath.Join("/sys/fs/cgroup", ce.Namespace(), c.ID())
		use, ok := read(filepath.Join(dir, "memory.current"))
		if !ok {
			dir = filepath.Join("/sys/fs/cgroup/memory", ce.Namespace(), c.ID())
			if use, ok = read(filepath.Join(dir, "memory.usage_in_bytes")); !ok {
				b.Fatalf("no memory cgroup for container %s", c.ID())
			}
		}
		stat, _ := os.ReadFile(filepath.Join(dir, "memory.stat"))
		for _, l := range strings.Split(string(stat), "\n") {
			if f := strings.Fields(l); len(f) == 2 && (f[0] == "total_inactive_file" || f[0] == "inactive_file") {
				if x, err := strconv.ParseInt(f[1], 10, 64); err == nil && x < use {
					use -= x
				}
				break
			}
		}
		total += use
	}
	return len(list), total
}

// cpuTicks is the host's CPU time from /proc/stat: busy (user, system,
// irq, softirq; not niced work, so a niced build beside the benchmark is
// not counted) and all.
type cpuTicks struct{ busy, all int64 }

func hostCPU(b *testing.B) cpuTicks {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(data), "\n", 2)[0])
	var t cpuTicks
	for i, v := range f[1:] {
		x, _ := strconv.ParseInt(v, 10, 64)
		if i < 8 { // user nice system idle iowait irq softirq steal
			t.all += x
		}
		if i == 0 || i == 2 || i == 5 || i == 6 {
			t.busy += x
		}
	}
	return t
}

// busySince is the fraction of all cores busy since t0.
func (t cpuTicks) busySince(t0 cpuTicks) float64 {
	if t.all == t0.all {
		return 0
	}
	return float64(t.busy-t0.busy) / float64(t.all-t0.all)
}
