package runner

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

// A job's pull policies (GitLab's image:pull_policy): only those the
// admin allows, tried in turn while the image cannot be had; none
// allowed fails the job before anything of it exists.
func TestRunJobPullPolicies(t *testing.T) {
	r := newTestRunner(t) // pull policy "never"
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// Named for a registry on a closed loopback port: a pull fails at
	// once, and the image is here.
	ref := "127.0.0.1:1/airlock-pull-test:latest"
	if err := cli.ImageTag(context.Background(), testenv.TestImage, ref); err != nil {
		t.Fatal(err)
	}
	defer cli.ImageRemove(context.Background(), ref, image.RemoveOptions{})
	run := func(id string, pull ...string) (*Result, string) {
		t.Helper()
		j := testJob(id, []string{"echo ran"}, nil)
		j.Image, j.Pull = ref, pull
		var out bytes.Buffer
		res, err := r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil {
			t.Fatal(err)
		}
		return res, out.String()
	}

	res, out := run("pull-refused", "always")
	if res.State != Failed || res.Reason != ConfigurationError || !strings.Contains(out, `image.pull_policy [always]: none of them is allowed on this runner (allowed: [never]`) || strings.Contains(out, "Preparing a hardened container") {
		t.Errorf("a job asking for a policy not allowed: %s/%s; output:\n%s", res.State, res.Reason, out)
	}

	r.cfg.AllowedPull = []executors.PullPolicy{executors.PullNever, executors.PullAlways}
	res, out = run("pull-fallback", "always", "if-not-present", "never")
	if res.State != Success || !strings.Contains(out, "ran") ||
		!strings.Contains(out, `with pull policy "always" failed`) || !strings.Contains(out, `Trying pull policy "never"`) || strings.Contains(out, `"if-not-present"`) {
		t.Errorf("always, then never (if-not-present is not allowed): %s/%s (%v); output:\n%s", res.State, res.Reason, res.Err, out)
	}
	res, out = run("pull-fails", "always")
	if res.State != Failed || res.Reason != ImagePullFailure {
		t.Errorf("always alone, the registry down: %s/%s; output:\n%s", res.State, res.Reason, out)
	}
	res, out = run("pull-runners")
	if res.State != Success {
		t.Errorf("no policy of the job's (the runner's never): %s/%s; output:\n%s", res.State, res.Reason, out)
	}
}

// GitLab's image:docker:user (GitHub's container --user) runs the job's
// container and steps; what they make in the work dir is the user's.
// With both executors.
func TestRunJobUser(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		env := isoOpen(t)
		j := &job.Job{ID: "user", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute, User: "1234:4321",
			Steps: []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{`echo "uid=$(id -u) gid=$(id -g)"`, `touch made-here && ls -ln made-here`}}}}
		var out bytes.Buffer
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil || res.State != Success || !strings.Contains(out.String(), "uid=1234 gid=4321") ||
			!regexp.MustCompile(`\s1234\s+4321\s.*made-here`).MatchString(out.String()) {
			t.Errorf("job as 1234:4321: %s/%s (%v), err %v; output:\n%s", res.State, res.Reason, res.Err, err, out.String())
		}
	})
}

// Through GitLab: a job whose image:pull_policy the runner does not
// allow fails with runner_configuration_error and says why; one with
// image:docker:user runs as that user.
func TestAgentImageOptions(t *testing.T) {
	e := newAgentEnv(t) // the runner's pull policy: never
	refused := gitlabSpec([]string{"echo never-runs"}, nil)
	refused.PullPolicy = []string{"always"}
	user := gitlabSpec([]string{`echo "uid=$(id -u)"`}, nil)
	user.User = "1234"
	refusedID, userID := e.gl.Enqueue(refused), e.gl.Enqueue(user)
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()
	st := waitJob(t, e.gl, refusedID, time.Minute)
	trace := string(e.gl.Trace(refusedID))
	if st.Status != "failed" || st.FailureReason != "runner_configuration_error" ||
		!strings.Contains(trace, "image.pull_policy [always]: none of them is allowed on this runner") || strings.Contains(trace, "never-runs") {
		t.Errorf("job asking for pull policy always: %s/%s; trace:\n%s", st.Status, st.FailureReason, trace)
	}
	st = waitJob(t, e.gl, userID, time.Minute)
	if trace := string(e.gl.Trace(userID)); st.Status != "success" || !strings.Contains(trace, "uid=1234") {
		t.Errorf("job with image:docker:user 1234: %s; trace:\n%s", st.Status, trace)
	}
}

// CI_DEBUG_TRACE=true has the shell print each command expanded; a
// masked variable's value stays masked in the trace.
func TestRunDebugTrace(t *testing.T) {
	r := newTestRunner(t)
	secret := "tr4ce-" + agentRandomHex(8)
	for _, on := range []bool{false, true} {
		j := testJob(fmt.Sprintf("trace-%v", on), []string{`GREETING=hello; echo "$GREETING $DEPLOY_TOKEN" > /dev/null`}, nil)
		j.Variables = []job.Variable{{Key: "DEPLOY_TOKEN", Value: secret, Masked: true}}
		if on {
			j.Variables = append(j.Variables, job.Variable{Key: "CI_DEBUG_TRACE", Value: "true", Public: true})
		}
		var out bytes.Buffer
		res, err := r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil || res.State != Success {
			t.Fatalf("trace %v: %s/%s (%v), err %v; output:\n%s", on, res.State, res.Reason, res.Err, err, out.String())
		}
		traced := strings.Contains(out.String(), "+ echo 'hello [MASKED]'") || strings.Contains(out.String(), "+ echo hello [MASKED]")
		if traced != on || strings.Contains(out.String(), secret) {
			t.Errorf("CI_DEBUG_TRACE %v: traced %v, or the secret shown; output:\n%s", on, traced, out.String())
		}
	}
}
