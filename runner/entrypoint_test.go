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

// A job's steps run through its image's ENTRYPOINT (GitLab's default, as
// gitlab-runner's build container runs its shell through it) or through
// the entrypoint the job names instead, inside the sandbox: what the
// entrypoint exports reaches every step, after_script included, and the
// step's exit code is the job's. Without either the steps run in the
// shell directly.
func TestStepEntrypoint(t *testing.T) {
	isoEachExecutor(t, testStepEntrypoint)
}

func testStepEntrypoint(t *testing.T) {
	img := testenv.VariantImageFiles(t, map[string]string{
		"/entry.sh": "#!/bin/sh\nexport FROM_ENTRY=image-entrypoint\nexec \"$@\"\n",
		"/other.sh": "#!/bin/sh\nexport FROM_ENTRY=job-entrypoint\nexport OTHER_ARGS=\"$#\"\nexec \"$@\"\n",
	}, `ENTRYPOINT ["/entry.sh"]`)
	env := isoOpen(t)
	run := func(id string, mod func(j *job.Job), script ...string) (*Result, string) {
		t.Helper()
		j := &job.Job{ID: id, Source: job.SourceLocal, Repo: isoRepo, Image: img, Timeout: time.Minute,
			Steps: []job.Step{
				{Name: "script", When: job.OnSuccess, Script: script},
				{Name: "after_script", When: job.Always, Script: []string{`echo "after: $FROM_ENTRY"`}},
			}}
		mod(j)
		var out bytes.Buffer
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		return res, out.String()
	}

	res, out := run("ep-image", func(j *job.Job) { j.EntrypointFromImage = true }, `echo "step: $FROM_ENTRY"`)
	if res.State != Success || !strings.Contains(out, "step: image-entrypoint\n") || !strings.Contains(out, "after: image-entrypoint\n") ||
		!strings.Contains(out, `through the image's entrypoint ["/entry.sh"]`) {
		t.Errorf("through the image's ENTRYPOINT: %s %v\n%s", res.State, res.Err, out)
	}

	res, out = run("ep-job", func(j *job.Job) { j.StepEntrypoint = []string{"/other.sh"} }, `echo "step: $FROM_ENTRY args=$OTHER_ARGS"`, "exit 7")
	if res.State != Failed || res.ExitCode != 7 || !strings.Contains(out, "step: job-entrypoint args=3\n") || !strings.Contains(out, `through the job's entrypoint ["/other.sh"]`) || !strings.Contains(out, "after: job-entrypoint\n") {
		t.Errorf("through the job's entrypoint: %s exit %d %v, want failed with 7\n%s", res.State, res.ExitCode, res.Err, out)
	}

	res, out = run("ep-none", func(j *job.Job) {}, `echo "step: [$FROM_ENTRY]"`)
	if res.State != Success || !strings.Contains(out, "step: []\n") || strings.Contains(out, "entrypoint") {
		t.Errorf("in the shell directly: %s %v\n%s", res.State, res.Err, out)
	}

	// An entrypoint that does not exec its arguments fails the step with
	// its own exit code, as it would fail gitlab-runner's job.
	res, out = run("ep-broken", func(j *job.Job) { j.StepEntrypoint = []string{"/bin/false"} }, "echo never")
	if res.State != Failed || strings.Contains(out, "never\n") {
		t.Errorf("an entrypoint that does not exec: %s %v\n%s", res.State, res.Err, out)
	}
}
