package runner

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/internal/testenv/registry"
)

// A GitLab job's image in the project's private registry is pulled with
// the job's registry credentials (the job token, as GitLab sends them),
// and one in another private registry with the job's DOCKER_AUTH_CONFIG,
// whose password and auth string are masked in the trace.
func TestAgentPullsPrivateImages(t *testing.T) {
	e := newAgentEnv(t)
	token := "glcbt-64_" + agentRandomHex(16)
	project := registry.RequireUser(t, "gitlab-ci-token", token)
	other := registry.Require(t)
	projectImage := project.Push(t, testenv.TestImage, "platform/web-app/builder:1")
	otherImage := other.Push(t, testenv.TestImage, "team/tools:2")

	r, err := New(Config{RunnerID: e.runnerID, RuntimeDir: e.runtime, Grace: time.Second, Pull: executors.PullIfNotPresent}, e.ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, stop := startAgent(t, e.config(1), r)
	defer stop()

	spec := gitlabSpec([]string{"echo FROM-PROJECT-REGISTRY"}, nil)
	spec.Image, spec.Token, spec.Registry = projectImage, token, project.Host
	id := e.gl.Enqueue(spec)
	if st := waitJob(t, e.gl, id, 2*time.Minute); st.Status != "success" || !strings.Contains(string(e.gl.Trace(id)), "FROM-PROJECT-REGISTRY") {
		t.Fatalf("project registry job ended %s/%s:\n%s", st.Status, st.FailureReason, e.gl.Trace(id))
	}

	auth := base64.StdEncoding.EncodeToString([]byte(other.Username + ":" + other.Password))
	spec = gitlabSpec([]string{"echo FROM-OTHER-REGISTRY", `echo "$DOCKER_AUTH_CONFIG"`}, nil)
	spec.Image = otherImage
	spec.Variables = append(spec.Variables, fakegitlab.Variable{Key: "DOCKER_AUTH_CONFIG",
		Value: `{"auths": {"` + other.Host + `": {"auth": "` + auth + `"}}}`})
	id = e.gl.Enqueue(spec)
	st := waitJob(t, e.gl, id, 2*time.Minute)
	trace := string(e.gl.Trace(id))
	if st.Status != "success" || !strings.Contains(trace, "FROM-OTHER-REGISTRY") {
		t.Fatalf("DOCKER_AUTH_CONFIG job ended %s/%s:\n%s", st.Status, st.FailureReason, trace)
	}
	if strings.Contains(trace, auth) || strings.Contains(trace, other.Password) {
		t.Errorf("the trace shows DOCKER_AUTH_CONFIG's credentials:\n%s", trace)
	}

	// Without credentials for its registry, the job fails naming it: with
	// the image here since the last job (it is not lent), and without.
	for range 2 {
		want := "without credentials for " + other.Host
		spec = gitlabSpec([]string{"echo NEVER"}, nil)
		spec.Image = otherImage
		id = e.gl.Enqueue(spec)
		st = waitJob(t, e.gl, id, 2*time.Minute)
		trace = string(e.gl.Trace(id))
		if st.Status != "failed" || st.FailureReason != "image_pull_failure" || strings.Contains(trace, "NEVER") || !strings.Contains(trace, want) {
			t.Errorf("job without credentials ended %s/%s, want an image_pull_failure saying %q:\n%s", st.Status, st.FailureReason, want, trace)
		}
		other.Forget(t, otherImage)
	}
}
