package runner

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// A GitHub step given to the runner without its coordinator's driver must
// fail the job, not pass as an empty script.
func TestDriverlessRunStepFails(t *testing.T) {
	r, err := New(Config{RunnerID: "driverless", RuntimeDir: t.TempDir()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	j := &job.Job{ID: "gh-1", Source: job.SourceGitHub, Image: "img", Timeout: time.Minute,
		Steps: []job.Step{{Name: "Hello", Kind: job.StepRun, Run: "echo hi", When: job.OnSuccess}}}
	res, err := r.Run(context.Background(), j, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.State != Failed || res.Reason != ConfigurationError || res.Err == nil || !strings.Contains(res.Err.Error(), `step "Hello" is a run step`) {
		t.Errorf("Run() = %+v (%v), want a configuration failure naming the step", res, res.Err)
	}
}
