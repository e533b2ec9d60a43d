package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
)

// TestE2EAutoscaleServesQueuedJobsOnJITRunners runs `airlock run` with an
// [[autoscale]] entry against the fake GitHub: the queued jobs whose
// labels this host serves are found by polling, each gets a JIT runner of
// its own (the runner protocol spoken by the agent, the job in its
// sandbox), a job of another label set is left queued, and no
// registration of this host outlives its job.
func TestE2EAutoscaleServesQueuedJobsOnJITRunners(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)
	testenv.RequireTestImage(t)
	f := fakegithub.NewRunners(t)
	f.PollHold = 300 * time.Millisecond
	// On containerd, whose default image runs the job that names none
	// (the JIT runners took Docker's, even under containerd).
	e := newE2E(t, e2eOptions{Executor: "containerd"})
	e.mustRun(f.AdminToken, "secret", "set", "gh-admin")
	e2eGitHubConfig(t, e)
	b, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("[containerd]\n", "[containerd]\nimage = \""+testenv.TestImage+"\"\n",
		"[docker]\nimage = \""+testenv.TestImage+"\"\n", "[docker]\nimage = \"airlock-test:not-this-one\"\n").Replace(string(b)) + `
[[autoscale]]
name = "acme"
url = "` + f.GitHubURL() + `"
api_url = "` + f.URL + `/api/v3"
token_secret = "gh-admin"
labels = ["airlock"]
max_runners = 2
poll_interval = "500ms"
idle_timeout = "20s"
reconcile_interval = "2s"
`
	if err := os.WriteFile(e.config, []byte(strings.Replace(cfg, "concurrent = 1", "concurrent = 2", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	var ours []*fakegithub.Job
	for _, name := range []string{"one", "two"} {
		ours = append(ours, f.QueueJob(fakegithub.JobSpec{Name: name, Labels: []string{"self-hosted", "airlock"},
			Steps: []fakegithub.Step{{Name: "Hello", Run: "echo hello from " + name}}}))
	}
	gpu := f.QueueJob(fakegithub.JobSpec{Name: "gpu", Labels: []string{"self-hosted", "gpu"}, Container: testenv.TestImage,
		Steps: []fakegithub.Step{{Name: "Hello", Run: "echo never"}}})

	p := e.start("run")
	for _, j := range ours {
		got, ok := f.WaitJob(j.ID, "completed", 2*time.Minute)
		if !ok || got.Conclusion != "succeeded" {
			p.signal(syscall.SIGTERM)
			res := p.wait(time.Minute)
			t.Fatalf("job %s: state %s conclusion %s\njob log:\n%s\nagent:\n%s", j.Spec.Name, got.State, got.Conclusion, got.JobLog, res.Output())
		}
		if !strings.Contains(got.StepLogs[j.Spec.Steps[0].ID], "hello from "+j.Spec.Name) {
			t.Errorf("job %s step log = %q; logs %v; job log %q", j.Spec.Name, got.StepLogs[j.Spec.Steps[0].ID], got.StepLogs, got.JobLog)
		}
	}
	// Registrations end with their jobs (or at the next reconcile).
	deadline := time.Now().Add(30 * time.Second)
	var left []string
	for time.Now().Before(deadline) {
		left = left[:0]
		for _, r := range f.Runners() {
			if strings.HasPrefix(r.Name, "airlock-") {
				left = append(left, r.Name)
			}
		}
		if len(left) == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("JIT registrations outlive their jobs: %v", left)
	}
	if st := f.Job(gpu.ID).State; st != "queued" {
		t.Errorf("the gpu job (labels this host does not serve) is %s, want queued", st)
	}
	p.signal(syscall.SIGTERM)
	res := p.wait(time.Minute)
	for _, j := range ours {
		if j.Token != "" && strings.Contains(res.Output(), j.Token) {
			t.Errorf("a job token is in the agent's log")
		}
	}
	if strings.Contains(res.Output(), f.AdminToken) {
		t.Errorf("the admin token is in the agent's log")
	}
	if v := f.Violations(); len(v) > 0 {
		t.Errorf("protocol violations: %v", v)
	}

	// The autoscaler's decisions are in a signed trail of their own,
	// sealed when the agent stopped, without a token in it.
	trails, _ := filepath.Glob(filepath.Join(e.state, "audit", "autoscale-acme-*.jsonl"))
	if len(trails) != 1 {
		t.Fatalf("autoscaler trails in %s: %v, want one", filepath.Join(e.state, "audit"), trails)
	}
	e.mustRun("", "audit", "verify", trails[0])
	body, err := os.ReadFile(trails[0])
	if err != nil {
		t.Fatal(err)
	}
	for typ, least := range map[string]int{"autoscale_job_queued": 2, "autoscale_runner_created": 2, "autoscale_job_started": 2, "seal": 1} {
		if c := strings.Count(string(body), `"type":"`+typ+`"`); c < least {
			t.Errorf("autoscaler trail has %d %s records, want at least %d (both jobs):\n%s", c, typ, least, body)
		}
	}
	for _, tok := range []string{f.AdminToken, ours[0].Token, ours[1].Token} {
		if tok != "" && strings.Contains(string(body), tok) {
			t.Errorf("a token is in the autoscaler's trail")
		}
	}
}
