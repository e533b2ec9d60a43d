package runner

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

// /dev/shm is 64 MiB unless the job asks for another size (GitHub's
// container.options --shm-size), which it gets within the container's
// memory limit; more than that fails the job before it runs, naming it.
func TestJobShmSize(t *testing.T) {
	isoEachExecutor(t, testJobShmSize)
}

func testJobShmSize(t *testing.T) {
	env := isoOpen(t)
	run := func(id string, shm int64) (*Result, string) {
		t.Helper()
		j := &job.Job{ID: id, Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute, ShmSize: shm,
			Steps: []job.Step{{Name: "script", When: job.OnSuccess, Script: []string{`echo "shm=$(df -k /dev/shm | awk 'NR==2 {print $2}')k"`}}}}
		var out bytes.Buffer
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		return res, out.String()
	}
	if res, out := run("shm-default", 0); res.State != Success || !strings.Contains(out, "shm=65536k\n") {
		t.Errorf("default /dev/shm: %s %v\n%s", res.State, res.Err, out)
	}
	if res, out := run("shm-big", 256<<20); res.State != Success || !strings.Contains(out, "shm=262144k\n") {
		t.Errorf("a 256 MiB /dev/shm: %s %v\n%s", res.State, res.Err, out)
	}
	res, out := run("shm-huge", 64<<30)
	if res.State == Success || res.Err == nil || !strings.Contains(res.Err.Error(), "/dev/shm of 65536 MiB is more than the container's memory limit") {
		t.Errorf("a /dev/shm over the memory limit: %s %v, want a failure naming it\n%s", res.State, res.Err, out)
	}
}
