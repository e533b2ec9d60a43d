package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// isoBenchMinJobs is the least number of job pairs the benchmark runs, so
// that its percentiles mean something at -benchtime 1x (make bench).
const isoBenchMinJobs = 10

// BenchmarkJobNetworkSetup runs the same Docker job (`true`) on a runner
// built by Open (own netns, veth, firewall, gateway), on a runner without
// a network (runner.New, Docker's "none" network, no audit trail) and on
// a runner built by Open whose Network is removed (audit trail kept),
// alternating, in the same run. It reports the total job times (p50,
// p95), the ratios (ratio-p50 against runner.New, ratio-open-p50 against
// Open without network), and the per-job network setup time: from
// "container created" to "gateway registered" in the runner's debug log
// (sandbox setup with its firewall, then the gateway's listeners), and
// the sandbox's part of it (allocate + plumb + firewall). The timings
// depend on the machine's load: compare the ratios, not the figures.
func BenchmarkJobNetworkSetup(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTestImage(b)
	ctx := context.Background()
	timing, log := newTimingLogger()

	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(b.TempDir(), "state")
	cfg.RuntimeDir = b.TempDir()
	cfg.Docker.Pull = string(executors.PullNever)
	cfg.Docker.Grace = time.Second
	cfg.Docker.StepServer = testenv.StepServer(b)
	withNet, err := openWired(ctx, cfg, log)
	if err != nil {
		b.Fatalf("Open() error = %v", err)
	}
	netID := withNet.cfg.RunnerID
	b.Cleanup(func() {
		if err := withNet.Close(); err != nil {
			b.Errorf("Close() error = %v", err)
		}
		isoAssertNothingLeft(b, netID, cfg)
	})

	// The same runner without its network: audit trail and secret store
	// stay, so the difference is the network alone.
	cfg2 := config.Defaults()
	cfg2.StateDir = filepath.Join(b.TempDir(), "state")
	cfg2.RuntimeDir = b.TempDir()
	cfg2.Docker = cfg.Docker
	auditOnly, err := openWired(ctx, cfg2, log)
	if err != nil {
		b.Fatalf("Open() error = %v", err)
	}
	auditOnly.Network = nil
	auditID := auditOnly.cfg.RunnerID
	b.Cleanup(func() {
		if err := auditOnly.Close(); err != nil {
			b.Errorf("Close() error = %v", err)
		}
		isoAssertNothingLeft(b, auditID, cfg2)
	})

	ex, err := docker.New(ctx, docker.Config{Grace: time.Second, StepServer: testenv.StepServer(b)}, log)
	if err != nil {
		b.Fatal(err)
	}
	rb := make([]byte, 4)
	rand.Read(rb)
	plainID := "b" + hex.EncodeToString(rb)
	plainCfg := config.Defaults()
	plainCfg.RuntimeDir = b.TempDir()
	plain, err := New(Config{RunnerID: plainID, RuntimeDir: plainCfg.RuntimeDir, Grace: time.Second, Pull: executors.PullNever}, ex, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		isoAssertNothingLeft(b, plainID, plainCfg)
		ex.Close()
	})

	n := max(b.N, isoBenchMinJobs)
	var with, without, withoutNet, setup, sandboxSetup []time.Duration
	runJob := func(r *Runner, id string) time.Duration {
		j := &job.Job{ID: id, Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute,
			Steps: []job.Step{{Name: "true", Script: []string{"true"}, When: job.OnSuccess}}}
		start := time.Now()
		res, err := r.Run(ctx, j, RunOptions{})
		d := time.Since(start)
		if err != nil {
			b.Fatalf("Run(%s) teardown error = %v", id, err)
		}
		if res.State != Success {
			b.Fatalf("Run(%s): state %s (%s), err %v", id, res.State, res.Reason, res.Err)
		}
		return d
	}
	// One unmeasured pair warms the engine's caches.
	runJob(withNet, "warm-net")
	runJob(plain, "warm-plain")
	runJob(auditOnly, "warm-audit")
	b.ResetTimer()
	for i := range n {
		id := fmt.Sprintf("bench-%d", i)
		with = append(with, runJob(withNet, id))
		without = append(without, runJob(plain, id))
		withoutNet = append(withoutNet, runJob(auditOnly, id))
		if d, ok := timing.between(id, "container created", "gateway registered"); ok {
			setup = append(setup, d)
		}
		if d, ok := timing.sandbox(id); ok {
			sandboxSetup = append(sandboxSetup, d)
		}
	}
	b.StopTimer()
	if len(setup) != n {
		b.Errorf("network setup timed for %d of %d jobs (debug log lines missing?)", len(setup), n)
	}
	b.ReportMetric(isoPercentileMS(with, 50), "job-net-p50-ms")
	b.ReportMetric(isoPercentileMS(with, 95), "job-net-p95-ms")
	b.ReportMetric(isoPercentileMS(without, 50), "job-nonet-p50-ms")
	b.ReportMetric(isoPercentileMS(without, 95), "job-nonet-p95-ms")
	b.ReportMetric(isoPercentileMS(withoutNet, 50), "job-open-nonet-p50-ms")
	if p := isoPercentileMS(without, 50); p > 0 {
		b.ReportMetric(isoPercentileMS(with, 50)/p, "ratio-p50")
	}
	if p := isoPercentileMS(withoutNet, 50); p > 0 {
		b.ReportMetric(isoPercentileMS(with, 50)/p, "ratio-open-p50")
	}
	b.ReportMetric(isoPercentileMS(setup, 50), "netsetup-p50-ms")
	b.ReportMetric(isoPercentileMS(setup, 95), "netsetup-p95-ms")
	b.ReportMetric(isoPercentileMS(sandboxSetup, 50), "sandbox-p50-ms")
	b.ReportMetric(isoPercentileMS(sandboxSetup, 95), "sandbox-p95-ms")
}

// newTimingLogger returns a logger that prints nothing and feeds every
// message, debug included, to a timing sink.
func newTimingLogger() (*isoTimingSink, hclog.InterceptLogger) {
	timing := &isoTimingSink{marks: map[string]map[string]time.Time{}}
	log := hclog.NewInterceptLogger(&hclog.LoggerOptions{Level: hclog.Off})
	log.RegisterSink(timing)
	return timing, log
}

// isoTimingSink records when each job's debug messages were logged, the
// sandbox's phase timings, and the "took" of every message that has one.
type isoTimingSink struct {
	mu     sync.Mutex
	marks  map[string]map[string]time.Time // job -> message -> time
	phases map[string]time.Duration        // job -> allocate+plumb+firewall
	tooks  map[string][]time.Duration      // message -> its "took"s
}

func (s *isoTimingSink) Accept(_ string, _ hclog.Level, msg string, args ...any) {
	now := time.Now()
	var jobID string
	var phases, took time.Duration
	for i := 0; i+1 < len(args); i += 2 {
		k, _ := args[i].(string)
		switch v := args[i+1].(type) {
		case string:
			if k == "job" {
				jobID = v
			}
		case time.Duration:
			if k == "allocate" || k == "plumb" || k == "firewall" {
				phases += v
			}
			if k == "took" {
				took = v
			}
		}
	}
	if jobID == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if took > 0 {
		if s.tooks == nil {
			s.tooks = map[string][]time.Duration{}
		}
		s.tooks[msg] = append(s.tooks[msg], took)
	}
	if s.marks[jobID] == nil {
		s.marks[jobID] = map[string]time.Time{}
	}
	if _, seen := s.marks[jobID][msg]; !seen {
		s.marks[jobID][msg] = now
	}
	if msg == "network set up" {
		if s.phases == nil {
			s.phases = map[string]time.Duration{}
		}
		s.phases[jobID] = phases
	}
}

// between returns the time from message from to message to of a job.
func (s *isoTimingSink) between(jobID, from, to string) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok1 := s.marks[jobID][from]
	z, ok2 := s.marks[jobID][to]
	if !ok1 || !ok2 || z.Before(a) {
		return 0, false
	}
	return z.Sub(a), true
}

// took returns the "took" of every message msg logged.
func (s *isoTimingSink) took(msg string) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.tooks[msg]...)
}

func (s *isoTimingSink) sandbox(jobID string) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.phases[jobID]
	return d, ok
}

func isoPercentileMS(d []time.Duration, p int) float64 {
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
