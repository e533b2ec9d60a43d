package containerd

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// A service runs in the job's network namespace, hardened like the job,
// labelled for recovery; its secret variables reach its process (not its
// container record), its output is kept for Logs, and Destroy removes it.
func TestServiceInJobNamespace(t *testing.T) {
	e := newTestExecutor(t, nil)
	c := create(t, e, testSpec("svc"))
	ctx := context.Background()
	const secret = "tok-ctrd-5e4d3c2b1a"
	s, err := c.StartService(ctx, executors.ServiceSpec{Name: "echo-0", Image: testenv.TestImage,
		Env: []string{"PUBLIC=visible"}, SecretEnv: []string{"TOKEN=" + secret},
		Cmd: []string{"sh", "-c", `echo service-started; while true; do echo "$TOKEN $PUBLIC" | nc -l -p 7777; done`}})
	if err != nil {
		t.Fatal(err)
	}
	code, out := run(t, c, "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp 127.0.0.1:7777 && exit 0; sleep 0.3; done; exit 1")
	if code != 0 || !strings.Contains(out, secret+" visible") {
		t.Errorf("the job's probe of the service = %d %q, want its variables", code, out)
	}
	ctr, err := e.cli.LoadContainer(e.ctx(ctx), s.ID())
	if err != nil {
		t.Fatal(err)
	}
	info, err := ctr.Info(e.ctx(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(info.Spec.GetValue()), secret) {
		t.Error("the service's container record holds its secret variable")
	}
	if info.Labels[executors.LabelJob] != "svc" || info.Labels[executors.LabelRunner] != "rtest01" || info.Labels[LabelService] != "echo-0" {
		t.Errorf("service labels = %v", info.Labels)
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	var logs strings.Builder
	_ = s.Logs(lctx, &logs, false)
	cancel()
	if !strings.Contains(logs.String(), "service-started") {
		t.Errorf("Logs = %q, want the service's output", logs.String())
	}
	if err := s.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Destroy(ctx); err != nil {
		t.Errorf("second Destroy = %v", err)
	}
	if _, err := e.cli.LoadContainer(e.ctx(ctx), s.ID()); err == nil {
		t.Error("the service's container is left after Destroy")
	}
}

// waitHealth polls the service's health until it is want (or fails).
func waitHealth(t *testing.T, s executors.Service, want string, within time.Duration) {
	t.Helper()
	hr := s.(executors.HealthReporter)
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		st, err := hr.Health(context.Background())
		if err != nil {
			t.Fatalf("Health() = %v", err)
		}
		if st == want {
			return
		}
		last = st
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("health is %q after %s, want %q", last, within, want)
}

// Health checks run as the engine runs them: a service's own check
// (starting until it passes, unhealthy after its retries fail), its
// image's HEALTHCHECK when it has none, ["NONE"] switching that off, a
// malformed one refused, and an exited service reported so.
func TestServiceHealth(t *testing.T) {
	e := newTestExecutor(t, nil)
	c := create(t, e, testSpec("svc-health"))
	ctx := context.Background()
	start := func(spec executors.ServiceSpec) executors.Service {
		t.Helper()
		if spec.Image == "" {
			spec.Image = testenv.TestImage
		}
		s, err := c.StartService(ctx, spec)
		if err != nil {
			t.Fatalf("StartService(%s): %v", spec.Name, err)
		}
		t.Cleanup(func() {
			if err := s.Destroy(ctx); err != nil {
				t.Errorf("Destroy(%s): %v", spec.Name, err)
			}
		})
		return s
	}

	ready := start(executors.ServiceSpec{Name: "ready-0", Cmd: []string{"sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 600"},
		Health: &executors.HealthCheck{Test: []string{"CMD-SHELL", "test -f /tmp/ready"}, Interval: 100 * time.Millisecond, Retries: 50}})
	if st, _ := ready.(executors.HealthReporter).Health(ctx); st != executors.HealthStarting {
		t.Errorf("health right after the start = %q, want starting", st)
	}
	waitHealth(t, ready, executors.HealthHealthy, 20*time.Second)

	failing := start(executors.ServiceSpec{Name: "failing-0", Cmd: []string{"sleep", "600"},
		Health: &executors.HealthCheck{Test: []string{"CMD", "false"}, Interval: 100 * time.Millisecond, Retries: 2}})
	waitHealth(t, failing, executors.HealthUnhealthy, 20*time.Second)

	// A probe that outlives its timeout fails (and is killed).
	slow := start(executors.ServiceSpec{Name: "slow-0", Cmd: []string{"sleep", "600"},
		Health: &executors.HealthCheck{Test: []string{"CMD", "sleep", "30"}, Interval: 100 * time.Millisecond, Timeout: 200 * time.Millisecond, Retries: 1}})
	waitHealth(t, slow, executors.HealthUnhealthy, 20*time.Second)

	img := testenv.VariantImageWith(t, "HEALTHCHECK --interval=100ms --retries=50 CMD test -f /tmp/img-ready")
	fromImage := start(executors.ServiceSpec{Name: "image-0", Image: img, Cmd: []string{"sh", "-c", "sleep 1; touch /tmp/img-ready; exec sleep 600"}})
	waitHealth(t, fromImage, executors.HealthHealthy, 20*time.Second)
	off := start(executors.ServiceSpec{Name: "off-0", Image: img, Cmd: []string{"sleep", "600"},
		Health: &executors.HealthCheck{Test: []string{"NONE"}}})
	if st, err := off.(executors.HealthReporter).Health(ctx); err != nil || st != executors.HealthNone {
		t.Errorf("health of a service whose check is switched off = %q, %v; want none", st, err)
	}

	exits := start(executors.ServiceSpec{Name: "exits-0", Cmd: []string{"true"},
		Health: &executors.HealthCheck{Test: []string{"CMD", "true"}, Interval: time.Hour}})
	waitHealth(t, exits, executors.HealthExited, 20*time.Second)

	if _, err := c.StartService(ctx, executors.ServiceSpec{Name: "bad-0", Image: testenv.TestImage, Cmd: []string{"sleep", "60"},
		Health: &executors.HealthCheck{Test: []string{"PING", "x"}}}); err == nil || !strings.Contains(err.Error(), "CMD, CMD-SHELL or NONE") {
		t.Errorf("StartService with a malformed health check = %v, want a refusal naming the forms", err)
	}
}
