package runner

import (
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/runner/cache"
)

// BenchmarkPipeline runs build -> test through the fake GitLab and real
// Docker twice per iteration: with artifacts (8 MiB passed on), a cache
// and a dependency, and the same jobs without them. It reports both and
// their ratio, so the cost of archiving is visible.
func BenchmarkPipeline(b *testing.B) {
	e := newAgentEnv(b)
	store, err := cache.New(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	cfg := e.config(1)
	cfg.Cache = store
	_, stop := startAgent(b, cfg, e.rec)
	defer stop()
	const build = "mkdir -p out vendor && dd if=/dev/urandom of=out/blob bs=1M count=8 2>/dev/null && echo lib > vendor/lib"
	run := func(withFiles bool) time.Duration {
		start := time.Now()
		bs := gitlabSpec([]string{build}, nil)
		if withFiles {
			bs.Artifacts = []fakegitlab.ArtifactSpec{{Paths: []string{"out"}, Type: "archive", Format: "zip"}}
			bs.Cache = []fakegitlab.CacheSpec{{Key: "bench", Paths: []string{"vendor"}}}
		}
		bid := e.gl.Enqueue(bs)
		if st := waitJob(b, e.gl, bid, 2*time.Minute); st.Status != "success" {
			b.Fatalf("build ended %s", st.Status)
		}
		ts := gitlabSpec([]string{"true"}, nil)
		if withFiles {
			ts.Script = []string{"test -s out/blob && test -f vendor/lib"}
			ts.Dependencies = []fakegitlab.DependencySpec{{ID: bid, Name: "build"}}
			ts.Cache = []fakegitlab.CacheSpec{{Key: "bench", Paths: []string{"vendor"}, Policy: "pull"}}
		}
		tid := e.gl.Enqueue(ts)
		if st := waitJob(b, e.gl, tid, 2*time.Minute); st.Status != "success" {
			b.Fatalf("test ended %s\n%s", st.Status, e.gl.Trace(tid))
		}
		return time.Since(start)
	}
	var plain, files time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plain += run(false)
		files += run(true)
	}
	b.ReportMetric(float64(plain.Milliseconds())/float64(b.N), "ms/plain-pipeline")
	b.ReportMetric(float64(files.Milliseconds())/float64(b.N), "ms/files-pipeline")
	b.ReportMetric(float64(files)/float64(plain), "files/plain")
}
