package runner

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
)

// GIT_STRATEGY fetch keeps a per-project repository on the host: the
// second job's fetch only transfers what is new (here nothing: its commit
// is in the cache already), and its workspace is right. The
// post_get_sources_script hook runs inside the job, after the sources.
func TestAgentGitFetchReusesHostCache(t *testing.T) {
	e := newAgentEnv(t)
	s := newCheckoutServer(t)
	payload := func(sha string) fakegitlab.JobSpec {
		return fakegitlab.JobSpec{Payload: func(id int64, token string) []byte {
			s.mu.Lock()
			s.Token = token
			s.mu.Unlock()
			return []byte(fmt.Sprintf(`{"id": %d, "token": %q, "allow_git_fetch": true,
			"job_info": {"name": "fetch", "project_full_path": "platform/web-app"},
			"git_info": {"repo_url": %q, "ref": "main", "sha": %q, "ref_type": "branch", "depth": 0,
				"refspecs": ["+refs/heads/main:refs/remotes/origin/main"]},
			"runner_info": {"timeout": 120},
			"image": {"name": %q},
			"variables": [{"key": "CI_JOB_TOKEN", "value": %q, "masked": true}],
			"hooks": [{"name": "post_get_sources_script", "script": ["echo post-hook-sees-$(cat README)"]}],
			"steps": [{"name": "script", "when": "on_success", "timeout": 120, "script": ["git log --oneline | wc -l"]}],
			"features": {"failure_reasons": ["script_failure", "runner_system_failure"]}}`,
				id, token, s.repoURL(token), sha, testenv.TestImage, token))
		}}
	}
	cfg := e.config(1)
	cfg.GitCacheDir = filepath.Join(t.TempDir(), "git")
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()

	first := e.gl.Enqueue(payload(s.SHAs[1]))
	if st := waitJob(t, e.gl, first, 2*time.Minute); st.Status != "success" {
		t.Fatalf("first job ended %s/%s\n%s", st.Status, st.FailureReason, e.gl.Trace(first))
	}
	if trace := string(e.gl.Trace(first)); !strings.Contains(trace, "post-hook-sees-two") {
		t.Errorf("first job: the post_get_sources_script hook did not run after the checkout:\n%s", trace)
	}
	if entries, _ := os.ReadDir(cfg.GitCacheDir); len(entries) == 0 {
		t.Fatalf("no repository in the git cache %s after a fetch job", cfg.GitCacheDir)
	}
	s.mu.Lock()
	before := len(s.bodies)
	s.mu.Unlock()

	second := e.gl.Enqueue(payload(s.SHAs[2]))
	st := waitJob(t, e.gl, second, 2*time.Minute)
	trace := string(e.gl.Trace(second))
	if st.Status != "success" {
		t.Fatalf("second job ended %s/%s\n%s", st.Status, st.FailureReason, trace)
	}
	for _, w := range []string{"Reusing the runner's git cache", "post-hook-sees-three"} {
		if !strings.Contains(trace, w) {
			t.Errorf("second job's trace lacks %q:\n%s", w, trace)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fetches := func(bodies [][]byte) int {
		n := 0
		for _, b := range bodies {
			if bytes.Contains(b, []byte("command=fetch")) {
				n++
			}
		}
		return n
	}
	if n := fetches(s.bodies[:before]); n == 0 {
		t.Errorf("the first job fetched no pack from GitLab")
	}
	// main is at the second job's commit already: the cache has it, so
	// nothing is fetched from GitLab again (only the refs are listed).
	if n := fetches(s.bodies[before:]); n != 0 {
		t.Errorf("the second job fetched %d packs from GitLab, want 0: the host cache was not reused", n)
	}
	if s.refused > 0 {
		t.Errorf("git server refused %d requests without the job token", s.refused)
	}
}

// GET_SOURCES_ATTEMPTS: a fetch that fails is tried again on an emptied
// workspace, up to that many times; with the default of 1 it fails the
// job.
func TestAgentGetSourcesAttempts(t *testing.T) {
	e := newAgentEnv(t)
	s := newCheckoutServer(t)
	payload := func(attempts string) fakegitlab.JobSpec {
		return fakegitlab.JobSpec{Payload: func(id int64, token string) []byte {
			s.mu.Lock()
			s.Token, s.unavailable = token, 1
			s.mu.Unlock()
			vars := fmt.Sprintf(`{"key": "CI_JOB_TOKEN", "value": %q, "masked": true}`, token)
			if attempts != "" {
				vars += fmt.Sprintf(`, {"key": "GET_SOURCES_ATTEMPTS", "value": %q, "public": true}`, attempts)
			}
			return []byte(fmt.Sprintf(`{"id": %d, "token": %q,
			"job_info": {"name": "attempts", "project_full_path": "platform/web-app"},
			"git_info": {"repo_url": %q, "ref": "main", "sha": %q, "ref_type": "branch", "depth": 1},
			"runner_info": {"timeout": 120},
			"image": {"name": %q},
			"variables": [%s],
			"steps": [{"name": "script", "when": "on_success", "timeout": 120, "script": ["cat README"]}],
			"features": {"failure_reasons": ["script_failure", "runner_system_failure"]}}`,
				id, token, s.repoURL(token), s.SHAs[2], testenv.TestImage, vars))
		}}
	}
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()
	once := e.gl.Enqueue(payload(""))
	if st := waitJob(t, e.gl, once, 2*time.Minute); st.Status != "failed" {
		t.Errorf("one attempt at an unavailable GitLab: %s, want failed\n%s", st.Status, e.gl.Trace(once))
	}
	twice := e.gl.Enqueue(payload("2"))
	st := waitJob(t, e.gl, twice, 2*time.Minute)
	if trace := string(e.gl.Trace(twice)); st.Status != "success" || !strings.Contains(trace, "Retrying (attempt 2 of 2, GET_SOURCES_ATTEMPTS)") || !strings.Contains(trace, "three") {
		t.Errorf("two attempts, the first refused: %s/%s\n%s", st.Status, st.FailureReason, trace)
	}
}
