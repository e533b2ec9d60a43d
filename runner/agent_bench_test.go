package runner

import (
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// BenchmarkAgentThroughput runs trivial jobs through the fake GitLab with
// concurrent = 4 on real Docker and reports jobs per minute, the heap in
// use while the agent idles (the whole test process: agent, fake GitLab,
// Docker client) and the bytes allocated per job (same scope). Run it
// with a fixed count, e.g. -bench AgentThroughput -benchtime 12x.
func BenchmarkAgentThroughput(b *testing.B) {
	e := newAgentEnv(b)
	cfg := e.config(4)
	cfg.Logger = hclog.NewNullLogger()
	_, stop := startAgent(b, cfg, e.r)
	defer stop()

	time.Sleep(500 * time.Millisecond) // a few idle polls
	runtime.GC()
	var idle runtime.MemStats
	runtime.ReadMemStats(&idle)

	b.ResetTimer()
	start := time.Now()
	ids := make([]int64, b.N)
	for i := range ids {
		ids[i] = e.gl.Enqueue(gitlabSpec([]string{"true"}, nil))
	}
	for _, id := range ids {
		if st := waitJob(b, e.gl, id, 5*time.Minute); st.Status != "success" {
			b.Fatalf("job %d ended %s, want success", id, st.Status)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(b.N)/elapsed.Minutes(), "jobs/min")
	b.ReportMetric(float64(idle.HeapInuse), "idle-heap-bytes")
	b.ReportMetric(float64(after.TotalAlloc-idle.TotalAlloc)/float64(b.N), "alloc-bytes/job")
	b.ReportMetric(float64(after.Mallocs-idle.Mallocs)/float64(b.N), "allocs/job")
}
