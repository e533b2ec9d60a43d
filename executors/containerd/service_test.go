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

// A health check is refused by name: containerd runs none.
func TestServiceHealthRefused(t *testing.T) {
	e := newTestExecutor(t, nil)
	c := create(t, e, testSpec("svc-health"))
	_, err := c.StartService(context.Background(), executors.ServiceSpec{Name: "db-0", Image: testenv.TestImage,
		Cmd: []string{"sleep", "60"}, Health: &executors.HealthCheck{Test: []string{"CMD-SHELL", "true"}}})
	if err == nil || !strings.Contains(err.Error(), "health checks") {
		t.Fatalf("StartService with a health check = %v, want a refusal", err)
	}
}
