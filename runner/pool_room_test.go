package runner

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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

// A build is reserved only while the builds stay within concurrent, and
// the jobs running plus the builds do too unless the CPUs have a core to
// spare, and the host has a job's memory available; a host that cannot
// say holds nothing back.
func TestPoolReserve(t *testing.T) {
	r := &Runner{}
	p := &Pool{r: r, log: hclog.NewNullLogger(), concurrent: 2, minAvailable: 2 << 20}
	setMemInfo(t, "MemTotal:       24000000 kB\nMemAvailable:       4096 kB\n")
	r.running.Store(1)
	if why := p.reserve(false); why != "" {
		t.Fatalf("1 job, no build, concurrent 2: %q, want a reservation", why)
	}
	if why := p.reserve(false); why != "concurrent: 1 jobs running and 1 sandboxes being built, concurrent = 2, no CPU core to spare" {
		t.Errorf("1 job and 1 build, concurrent 2: %q, want held", why)
	}
	// Beside the job with the CPUs it leaves idle, but never more builds
	// at once than concurrent.
	if why := p.reserve(true); why != "" {
		t.Errorf("1 job and 1 build, concurrent 2, a core to spare: %q, want a reservation", why)
	}
	if why := p.reserve(true); why != "concurrent: 2 sandboxes being built, concurrent = 2" {
		t.Errorf("2 builds, concurrent 2, a core to spare: %q, want held", why)
	}
	p.inBuild = 0
	r.running.Store(2)
	if why := p.reserve(false); !strings.HasPrefix(why, "concurrent: 2 jobs running") {
		t.Errorf("2 jobs, concurrent 2: %q, want held", why)
	}
	r.running.Store(0)
	p.concurrent = 0
	for i := range 8 {
		if why := p.reserve(false); why != "" {
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
		why := p.reserve(false)
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

// fakeCPU points cpuStat at a file of the test's that a goroutine moves
// on every 10 ms, as a host of 2 cores all idle or all busy (busy.Load()),
// until cleanup.
func fakeCPU(t *testing.T, busy *atomic.Bool) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "stat")
	var idle, all int64
	write := func() {
		data := fmt.Sprintf("cpu  %d 0 0 %d 0 0 0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\nintr 1\n", all-idle, idle)
		if err := os.WriteFile(p+".new", []byte(data), 0o600); err == nil {
			_ = os.Rename(p+".new", p)
		}
	}
	write()
	saved := cpuStat
	cpuStat = p
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			all += 2
			if !busy.Load() {
				idle += 2
			}
			write()
		}
	}()
	t.Cleanup(func() { close(stop); <-done; cpuStat = saved })
}

// The CPU look: the share of the host's cores idle between two looks;
// a host that cannot say has none to spare; this host's can be read.
func TestCPULook(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stat")
	saved := cpuStat
	cpuStat = p
	t.Cleanup(func() { cpuStat = saved })
	set := func(s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	four := "cpu%d 0 0 0 0\ncpu%d 0 0 0 0\ncpu%d 0 0 0 0\ncpu%d 0 0 0 0\n"
	set("cpu  100 0 100 800 0 0 0 0 0 0\n" + fmt.Sprintf(four, 0, 1, 2, 3))
	l := newCPULook()
	// 400 ticks on 4 cores, 60 idle (iowait counts): 0.6 of a core.
	set("cpu  200 0 200 840 20 0 0 0 0 0\n" + fmt.Sprintf(four, 0, 1, 2, 3))
	if !l.spare() {
		t.Error("0.6 of 4 cores idle: want a core to spare (spareCores 0.5)")
	}
	// 400 more, 40 idle: 0.4.
	set("cpu  380 0 380 880 20 0 0 0 0 0\n" + fmt.Sprintf(four, 0, 1, 2, 3))
	if l.spare() {
		t.Error("0.4 of 4 cores idle: want none to spare")
	}
	if l.spare() {
		t.Error("no time passed: want none to spare")
	}
	for _, bad := range []string{"", "cpu  1 2\ncpu0 1\n", "cpu  1 2 x 4 5 6 7 8\ncpu0 1\n", "cpu  1 2 3 4 5 6 7 8\n"} {
		set(bad)
		if _, err := readCPU(); err == nil {
			t.Errorf("readCPU(%q): no error", bad)
		}
		if l.spare() {
			t.Errorf("stat %q: want none to spare", bad)
		}
	}
	cpuStat = "/proc/stat"
	if c, err := readCPU(); err != nil || c.cores < 1 || c.all <= 0 {
		t.Errorf("this host's CPU times: %+v, %v", c, err)
	}
}

// End to end: a pool started while a job runs with concurrent = 1 builds
// nothing while the CPUs are busy, and beside the job once they have a
// core to spare; one on a host short of a job's memory builds nothing
// until memory is available. Stats.Held says why.
func TestPoolRefillsWithinConcurrentAndMemory(t *testing.T) {
	env := isoOpen(t)
	var busy atomic.Bool
	busy.Store(true)
	fakeCPU(t, &busy)
	j := &job.Job{ID: "holds-the-slot", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: 2 * time.Minute,
		Steps: []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{"sleep 100"}}}}
	done := make(chan *Result, 1)
	jctx, cancelJob := context.WithCancel(context.Background())
	defer cancelJob()
	var out bytes.Buffer
	go func() {
		res, _ := env.r.Run(jctx, j, RunOptions{Out: &out})
		done <- res
	}()
	for env.r.running.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	p := isoPool(t, env, PoolConfig{Sizes: map[string]int{testenv.TestImage: 1}, Concurrent: 1})
	time.Sleep(time.Second)
	if st := p.Stats(); st.Ready[testenv.TestImage] != 0 || st.Held != "concurrent: 1 jobs running and 0 sandboxes being built, concurrent = 1, no CPU core to spare" {
		t.Errorf("with the only slot taken and the CPUs busy: %+v, want nothing ready and held for concurrent", st)
	}
	busy.Store(false)
	isoWaitReady(t, p)
	if st := p.Stats(); st.Held != "" || env.r.running.Load() != 1 {
		t.Errorf("ready, yet held: %q; jobs running: %d, want the job still running", st.Held, env.r.running.Load())
	}
	cancelJob()
	if res := <-done; res.State == Success {
		t.Fatalf("job cancelled, yet %s\n%s", res.State, out.String())
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
