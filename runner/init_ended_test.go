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

// A job whose code stops its container's init (here, SIGTERM to PID 1)
// fails at once as its own failure (script_failure, not a system failure
// of the runner, which GitLab would retry), saying why, with either
// executor; its after_script-like steps fail at once too, and the job
// does not wait for its timeout.
func TestJobStoppingItsInitFails(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		env := isoOpen(t)
		j := &job.Job{ID: "stops-init", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: 5 * time.Minute,
			Steps: []job.Step{
				{Name: "script", When: job.OnSuccess, Script: []string{"echo before", "kill -TERM 1", "sleep 30", "echo after"}},
				{Name: "after", When: job.Always, Script: []string{"echo after-script"}},
			}}
		var out bytes.Buffer
		start := time.Now()
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if res.State != Failed || res.Reason != ScriptFailure {
			t.Errorf("state %s (%s), want failed (script_failure); output:\n%s", res.State, res.Reason, out.String())
		}
		if took := time.Since(start); took > time.Minute {
			t.Errorf("the job took %s: it waited instead of ending with its container", took)
		}
		if o := out.String(); !strings.Contains(o, "the job's container stopped") || strings.Contains(o, "after-script\n") || strings.Contains(o, "\nafter\n") {
			t.Errorf("output does not say the container stopped, or ran on:\n%s", o)
		}
	})
}
