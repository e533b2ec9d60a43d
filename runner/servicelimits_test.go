package runner

import (
	"testing"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// limitsLine prints the pids, memory and CPU limits of the container's
// cgroup (v2, or v1 as the engines mount it) on one line.
const limitsLine = `cg=/sys/fs/cgroup; if [ -f $cg/cgroup.controllers ]; then echo $(cat $cg/pids.max $cg/memory.max $cg/cpu.max); else echo $(cat $cg/pids/pids.max $cg/memory/memory.limit_in_bytes $cg/cpu/cpu.cfs_quota_us $cg/cpu/cpu.cfs_period_us); fi`

// A service gets the limits of [docker]/[containerd] service_* where
// they are set and the job's where not; the job's own are untouched.
func TestServiceLimits(t *testing.T) { isoEachExecutor(t, testServiceLimits) }

func testServiceLimits(t *testing.T) {
	env := isoOpenWith(t, func(c *config.Config) {
		c.Docker.ServiceLimits.Memory, c.Docker.ServiceLimits.PidsLimit = "256m", 77
		c.Containerd.ServiceLimits.Memory, c.Containerd.ServiceLimits.PidsLimit = "256m", 77
	})
	j := isoJob("svc-limits", nil, []isoProbe{
		{name: "service", cmd: "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp db:5432 && break; sleep 0.3; done"},
		{name: "job", cmd: "echo ok $(" + limitsLine + ")"},
	})
	j.Services = []job.Service{{
		Image:   testenv.TestImage,
		Aliases: []string{"db"},
		Command: []string{"sh", "-c", `while true; do (` + limitsLine + `) | nc -l -p 5432; done`},
	}}
	run := env.run(t, j, nil)
	if run.res.State != Success {
		t.Fatalf("job: state %s (%s), err %v; output:\n%s", run.res.State, run.res.Reason, run.res.Err, run.out)
	}
	// 2 CPUs (the job's, kept): a quota of twice the period.
	if got, want := run.probe(t, "service"), "ok connected 77 268435456 200000 100000"; got != want {
		t.Errorf("the service's limits: %q, want %q (pids and memory of service_*, the job's CPUs)", got, want)
	}
	if got, want := run.probe(t, "job"), "ok 1024 2147483648 200000 100000"; got != want {
		t.Errorf("the job's limits: %q, want %q (the defaults)", got, want)
	}
}
