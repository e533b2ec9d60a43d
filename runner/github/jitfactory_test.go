package github

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/runner/github/autoscale"
	"github.com/airlock-ci/airlock/runner/job"
)

var _ autoscale.JITFactory = JITFactory{}

func TestJITFactoryRunsAndResumes(t *testing.T) {
	f := fakegithub.NewRunners(t)
	f.PollHold = 100 * time.Millisecond
	enc, _ := f.JITConfig("scaled-1", "airlock")
	fac := JITFactory{Convert: testConvert}
	co, err := fac.NewJIT([]byte(enc))
	if err != nil {
		t.Fatal(err)
	}
	if co.Name() != "github:scaled-1" || co.Limit() != 1 {
		t.Errorf("coordinator %s limit %d", co.Name(), co.Limit())
	}
	c := co.(*Coordinator)
	defer c.Close(context.Background())
	fj := f.QueueJob(fakegithub.JobSpec{Name: "scaled", Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	l, err := acquire(t, c)
	if err != nil {
		t.Fatal(err)
	}
	// The agent crashes; the autoscaler resumes the record without the runner.
	rl, err := fac.Resume(l.Record())
	if err != nil {
		t.Fatal(err)
	}
	j, err := rl.Job()
	if err != nil || !strings.HasPrefix(j.ID, "github-scaled-1-") {
		t.Fatalf("resumed job %+v, %v", j, err)
	}
	if err := rl.Finish(context.Background(), job.Outcome{State: job.Failed, Aborted: true}, ""); err != nil {
		t.Fatal(err)
	}
	if got := f.Job(fj.ID); got.Conclusion != "failed" {
		t.Errorf("conclusion %q", got.Conclusion)
	}
}
