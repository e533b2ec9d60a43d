package runner

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// A job's own work directory (GitLab's GIT_CLONE_PATH) is where its
// steps run and CI_PROJECT_DIR, with either executor; one not below the
// runner's is refused before anything runs.
// The same with a read-only root, where the runner's work directory is
// a tmpfs.
func TestJobWorkDir(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		t.Run("writable", func(t *testing.T) { testJobWorkDir(t, isoOpen(t)) })
		t.Run("read-only", func(t *testing.T) {
			testJobWorkDir(t, isoOpenWith(t, func(c *config.Config) { c.Docker.ReadOnly, c.Containerd.ReadOnly = true, true }))
		})
	})
}

func testJobWorkDir(t *testing.T, env *isoEnv) {
	run := func(id, dir string) (*Result, string) {
		t.Helper()
		j := &job.Job{ID: id, Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute, WorkDir: dir,
			Steps: []job.Step{{Name: "script", When: job.OnSuccess, Script: []string{`echo "pwd=$(pwd) dir=$CI_PROJECT_DIR builds=$CI_BUILDS_DIR"; touch here`}}}}
		var out bytes.Buffer
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		return res, out.String()
	}
	if res, out := run("wd-own", "/builds/go/src/app"); res.State != Success || !strings.Contains(out, "pwd=/builds/go/src/app dir=/builds/go/src/app builds=/builds\n") {
		t.Errorf("a job with its own work dir: %s %v\n%s", res.State, res.Err, out)
	}
	if res, out := run("wd-outside", "/srv/app"); res.State == Success || res.Err == nil || !strings.Contains(res.Err.Error(), "work dir /srv/app is not below the runner's /builds") || strings.Contains(out, "pwd=") {
		t.Errorf("a work dir outside the runner's: %s %v\n%s", res.State, res.Err, out)
	}
}
