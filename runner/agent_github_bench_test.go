package runner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/runner/github"
)

// BenchmarkAgentThroughputGitHub runs b.N trivial jobs through the fake
// GitLab and then b.N through the fake GitHub (four registered runners:
// GitHub gives a runner one job at a time), both with concurrent = 4 on
// real Docker, and reports jobs per minute of each and their ratio
// (github/gitlab, measured in the same run). E.g. -benchtime 12x.
func BenchmarkAgentThroughputGitHub(b *testing.B) {
	e := newAgentEnv(b)
	quiet := hclog.NewNullLogger()

	cfg := e.config(4)
	cfg.Logger = quiet
	_, stop := startAgent(b, cfg, e.r)
	time.Sleep(300 * time.Millisecond)
	b.ResetTimer()
	start := time.Now()
	ids := make([]int64, b.N)
	for i := range ids {
		ids[i] = e.gl.Enqueue(gitlabSpec([]string{"true"}, nil))
	}
	for _, id := range ids {
		if st := waitJob(b, e.gl, id, 5*time.Minute); st.Status != "success" {
			b.Fatalf("GitLab job %d ended %s, want success", id, st.Status)
		}
	}
	gitlabRate := float64(b.N) / time.Since(start).Minutes()
	b.StopTimer()
	stop()

	f := fakegithub.NewRunners(b)
	f.PollHold = time.Second
	gcfg := e.config(4)
	gcfg.Logger = quiet
	gcfg.Runners = nil
	agentCfg := gcfg.build(b)
	agentCfg.StateDir = b.TempDir()
	for i := range 4 {
		reg, err := github.Register(context.Background(), nil, github.RegisterOptions{URL: f.GitHubURL(), Token: f.RegistrationToken(),
			Name: fmt.Sprintf("bench-%d", i), Labels: []string{"airlock"}})
		if err != nil {
			b.Fatal(err)
		}
		c, err := github.New(github.Config{Name: reg.AgentName, Registration: reg, Logger: quiet,
			Convert: github.MessageConverter(testenv.TestImage, reg.AgentName, nil, quiet)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close(context.Background()) })
		agentCfg.Coordinators = append(agentCfg.Coordinators, c)
	}
	a, err := NewAgent(agentCfg, e.r)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(300 * time.Millisecond)
	b.StartTimer()
	start = time.Now()
	jobs := make([]*fakegithub.Job, b.N)
	for i := range jobs {
		jobs[i] = f.QueueJob(fakegithub.JobSpec{Name: "trivial", Labels: []string{"airlock"}, Container: testenv.TestImage,
			Steps: []fakegithub.Step{{Name: "True", Run: "true"}}})
	}
	for _, j := range jobs {
		if got, ok := f.WaitJob(j.ID, "completed", 5*time.Minute); !ok || got.Conclusion != "succeeded" {
			b.Fatalf("GitHub job ended %s %q, want succeeded; log:\n%s", got.State, got.Conclusion, got.JobLog)
		}
	}
	githubRate := float64(b.N) / time.Since(start).Minutes()
	b.StopTimer()
	b.ReportMetric(gitlabRate, "gitlab-jobs/min")
	b.ReportMetric(githubRate, "github-jobs/min")
	b.ReportMetric(githubRate/gitlabRate, "github/gitlab")
}
