package runner

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

// setMemInfo points memAvailable at a file of the test's with content,
// restored at cleanup, and returns its path.
func setMemInfo(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	saved := memInfo
	memInfo = p
	t.Cleanup(func() { memInfo = saved })
	return p
}

// A build is reserved only while the jobs running plus the builds in
// progress stay within concurrent and the host has a job's memory
// available; a host that cannot say holds nothing back.
func TestPoolReserve(t *testing.T) {
	r := &Runner{}
	p := &Pool{r: r, log: hclog.NewNullLogger(), concurrent: 2, minAvailable: 2 << 20}
	setMemInfo(t, "MemTotal:       24000000 kB\nMemAvailable:       4096 kB\n")
	r.running.Store(1)
	if why := p.reserve(); why != "" {
		t.Fatalf("1 job, no build, concurrent 2: %q, want a reservation", why)
	}
	if why := p.reserve(); !strings.HasPrefix(why, "concurrent: 1 jobs running and 1 sandboxes being built, concurrent = 2") {
		t.Errorf("1 job and 1 build, concurrent 2: %q, want held", why)
	}
	p.inBuild--
	r.running.Store(2)
	if why := p.reserve(); !strings.HasPrefix(why, "concurrent: 2 jobs running") {
		t.Errorf("2 jobs, concurrent 2: %q, want held", why)
	}
	r.running.Store(0)
	p.concurrent = 0
	for i := range 8 {
		if why := p.reserve(); why != "" {
			t.Fatalf("no concurrent bound, build %d: %q", i, why)
		}
	}

	p.concurrent, p.inBuild = 0, 0
	for _, tc := range []struct{ meminfo, want string }{
		{"MemAvailable:       1024 kB\n", "memory: 1 MiB available, a job may use 2 MiB"},
		{"MemAvailable:       2048 kB\n", ""},
		{"MemAvailable:  lots\n", ""}, // cannot tell: not held back
		{"MemTotal: 1 kB\n", ""},
	} {
		setMemInfo(t, tc.meminfo)
		before := p.inBuild
		why := p.reserve()
		if why != tc.want {
			t.Errorf("meminfo %q: %q, want %q", tc.meminfo, why, tc.want)
		}
		// A build allowed is a build counted, whatever the memory said.
		if reserved := p.inBuild - before; (why == "") != (reserved == 1) {
			t.Errorf("meminfo %q: %q with %d builds reserved", tc.meminfo, why, reserved)
		}
	}
	setMemInfo(t, "MemAvailable:  lots\n")
	if _, err := memAvailable(); err == nil || !strings.Contains(err.Error(), `MemAvailable "lots"`) {
		t.Errorf("malformed meminfo: %v", err)
	}
	if avail, err := (func() (int64, error) { memInfo = "/proc/meminfo"; return memAvailable() })(); err != nil || avail <= 0 {
		t.Errorf("this host's MemAvailable = %d, %v", avail, err)
	}
}

// End to end: a pool started while a job runs with concurrent = 1 builds
// nothing until the job ends; one on a host short of a job's memory
// builds nothing until memory is available. Stats.Held says why.
func TestPoolRefillsWithinConcurrentAndMemory(t *testing.T) {
	env := isoOpen(t)
	j := &job.Job{ID: "holds-the-slot", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: 2 * time.Minute,
		Steps: []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{"sleep 4"}}}}
	done := make(chan *Result, 1)
	var out bytes.Buffer
	go func() {
		res, _ := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		done <- res
	}()
	for env.r.running.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	p := isoPool(t, env, PoolConfig{Sizes: map[string]int{testenv.TestImage: 1}, Concurrent: 1})
	time.Sleep(time.Second)
	if st := p.Stats(); st.Ready[testenv.TestImage] != 0 || !strings.HasPrefix(st.Held, "concurrent: 1 jobs running and 0 sandboxes being built, concurrent = 1") {
		t.Errorf("with the only slot taken: %+v, want nothing ready and held for concurrent", st)
	}
	if res := <-done; res.State != Success {
		t.Fatalf("job: %s (%s)\n%s", res.State, res.Reason, out.String())
	}
	isoWaitReady(t, p)
	if st := p.Stats(); st.Held != "" {
		t.Errorf("ready, yet held: %q", st.Held)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	mem := setMemInfo(t, "MemAvailable:  1024 kB\n")
	p = isoPool(t, env, PoolConfig{Sizes: map[string]int{testenv.TestImage: 1}, MinAvailable: 2 << 30})
	time.Sleep(time.Second)
	if st := p.Stats(); st.Ready[testenv.TestImage] != 0 || st.Held != "memory: 1 MiB available, a job may use 2048 MiB" {
		t.Errorf("short of memory: %+v, want nothing ready and held for memory", st)
	}
	if err := os.WriteFile(mem, []byte("MemAvailable:  4194304 kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	isoWaitReady(t, p)
}
