package github

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/runner/job"
)

func TestEndpoints(t *testing.T) {
	tests := []struct{ in, api, scope string }{
		{"https://github.com/acme/app", "https://api.github.com", "/repos/acme/app"},
		{"https://github.com/acme", "https://api.github.com", "/orgs/acme"},
		{"https://github.com/enterprises/big", "https://api.github.com", "/enterprises/big"},
		{"https://ghes.example.com/acme/app/", "https://ghes.example.com/api/v3", "/repos/acme/app"},
		{"https://acme.ghe.com/acme", "https://api.acme.ghe.com", "/orgs/acme"},
	}
	for _, tc := range tests {
		api, scope, err := Endpoints(tc.in)
		if err != nil || api != tc.api || scope != tc.scope {
			t.Errorf("Endpoints(%q) = %q, %q, %v; want %q, %q", tc.in, api, scope, err, tc.api, tc.scope)
		}
	}
	for _, bad := range []string{"github.com/acme", "https://github.com/", "https://github.com/a/b/c", "ftp://x/y"} {
		if _, _, err := Endpoints(bad); err == nil {
			t.Errorf("Endpoints(%q) accepted", bad)
		}
	}
}

func TestRegisterBothFlowsRunJobsAndUnregister(t *testing.T) {
	for _, flow := range []struct {
		name        string
		runnerAdmin bool
		fips        bool
	}{{"runner-admin flow, PS256", true, true}, {"classic agents flow, RS256", false, false}} {
		t.Run(flow.name, func(t *testing.T) {
			f := fakegithub.NewRunners(t)
			f.PollHold = 100 * time.Millisecond
			f.RunnerAdminFlow, f.RequireFIPS = flow.runnerAdmin, flow.fips
			ctx := context.Background()
			reg, err := Register(ctx, nil, RegisterOptions{URL: f.GitHubURL(), Token: f.RegistrationToken(), Name: "build-1", Labels: []string{"airlock", "gpu"}})
			if err != nil {
				t.Fatal(err)
			}
			fr, ok := f.Runner(reg.AgentID)
			if !ok || fr.Name != "build-1" || reg.Key.N.Cmp(fr.Key.N) != 0 || reg.RequireFIPS != flow.fips || reg.Ephemeral {
				t.Fatalf("registered %+v, fake has %+v", reg, fr)
			}
			if !strings.Contains(strings.Join(fr.Labels, ","), "airlock") {
				t.Errorf("labels %v lack airlock", fr.Labels)
			}
			// The private key never left the host.
			if strings.Contains(f.Received(), reg.Key.D.String()) {
				t.Error("private exponent reached the fake")
			}
			// A persistent runner takes one job after another.
			c := newTestCoordinator(t, reg)
			for i := 0; i < 2; i++ {
				fj := f.QueueJob(fakegithub.JobSpec{Name: "j", Labels: []string{"airlock"}, Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
				l, err := acquire(t, c)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := l.Job(); err != nil {
					t.Fatal(err)
				}
				d := start(t, l)
				d.step("A", "hi\n")
				if err := d.finish(t, job.Outcome{State: job.Success, Steps: []job.StepResult{{Name: "A"}}}); err != nil {
					t.Fatal(err)
				}
				if got := f.Job(fj.ID); got.Conclusion != "succeeded" {
					t.Fatalf("job %d conclusion %q", i, got.Conclusion)
				}
			}
			if err := c.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if f.Sessions() != 0 {
				t.Error("Close left the session open")
			}
			if err := Verify(ctx, nil, reg); err != nil {
				t.Fatalf("Verify of a live registration: %v", err)
			}
			if err := Unregister(ctx, nil, reg, "wrong"); err == nil {
				t.Error("Unregister with a wrong token succeeded")
			}
			if err := Unregister(ctx, nil, reg, f.RemoveToken()); err != nil {
				t.Fatal(err)
			}
			if _, ok := f.Runner(reg.AgentID); !ok || len(f.Runners()) != 0 {
				t.Error("the runner is still registered after Unregister")
			}
			if err := Verify(ctx, nil, reg); !errors.Is(err, job.ErrCoordinatorGone) {
				t.Errorf("Verify after Unregister = %v, want ErrCoordinatorGone", err)
			}
			checkClean(t, f)
		})
	}
}

func TestRegisterRefusesBadTokenAndDuplicateName(t *testing.T) {
	f := fakegithub.NewRunners(t)
	ctx := context.Background()
	if _, err := Register(ctx, nil, RegisterOptions{URL: f.GitHubURL(), Token: "AABBWRONG", Name: "r"}); err == nil || strings.Contains(err.Error(), "AABBWRONG") {
		t.Errorf("Register with a wrong token = %v; want an error that does not quote the token", err)
	}
	first, err := Register(ctx, nil, RegisterOptions{URL: f.GitHubURL(), Token: f.RegistrationToken(), Name: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Register(ctx, nil, RegisterOptions{URL: f.GitHubURL(), Token: f.RegistrationToken(), Name: "r"}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second Register of the same name = %v, want 'already exists'", err)
	}
	second, err := Register(ctx, nil, RegisterOptions{URL: f.GitHubURL(), Token: f.RegistrationToken(), Name: "r", Replace: true})
	if err != nil {
		t.Fatalf("Register --replace: %v", err)
	}
	if rs := f.Runners(); len(rs) != 1 || rs[0].ID != second.AgentID || second.AgentID == first.AgentID {
		t.Errorf("after replace the fake has %+v; want only the new runner", rs)
	}
	if err := Verify(ctx, nil, first); !errors.Is(err, job.ErrCoordinatorGone) {
		t.Errorf("Verify of the replaced registration = %v, want ErrCoordinatorGone", err)
	}
}
