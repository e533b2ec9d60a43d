package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/runner/job"
)

// serviceImage is a local image like the test image, exposing 5432/tcp
// (made with a commit, never pulled).
const serviceImage = "airlock-test:svc"

func makeServiceImage(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: testenv.TestImage, Cmd: []string{"true"}}, nil, nil, nil, "")
	if err != nil {
		t.Fatalf("creating a container to commit: %v", err)
	}
	defer cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	prev, _ := cli.ImageInspect(ctx, serviceImage)
	made, err := cli.ContainerCommit(ctx, c.ID, container.CommitOptions{Reference: serviceImage,
		Changes: []string{"EXPOSE 5432/tcp", `CMD ["/bin/sh"]`}})
	if err != nil {
		t.Fatalf("committing %s: %v", serviceImage, err)
	}
	if prev.ID != "" && prev.ID != made.ID {
		// The one an earlier test made, untagged now: not left dangling.
		_, _ = cli.ImageRemove(ctx, prev.ID, image.RemoveOptions{})
	}
}

// A service runs in the job's own network namespace, with either
// executor: the job reaches it by its alias and by the name derived from
// its image, and the service reaches nothing the job may not (a forbidden
// host of the fake internet). The same in a namespace the pool plumbed
// ahead ([pool] networks), where with Docker the job's container joins a
// holder's namespace and its services join the job's.
func TestServicesShareTheJobsNetwork(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		t.Run("cold", func(t *testing.T) { testServicesShareTheJobsNetwork(t, false) })
		t.Run("pooled-network", func(t *testing.T) { testServicesShareTheJobsNetwork(t, true) })
	})
}

func testServicesShareTheJobsNetwork(t *testing.T, pooled bool) {
	env := isoOpen(t)
	makeServiceImage(t)
	var p *Pool
	if pooled {
		p = isoStartPoolWith(t, env, PoolConfig{Networks: 1}, poolNetworks)
	}
	forbidden := testenv.ForbiddenAddr.String() + ":7" // not 80/443: those go to the transparent proxy
	j := isoJob("svc-job", nil, []isoProbe{
		// The service's nc restarts between connections: retry a gap.
		{name: "alias", cmd: "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp db:5432 && break; sleep 0.3; done"},
		{name: "derived", cmd: "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp airlock-test:5432 && break; sleep 0.3; done"},
	})
	j.Variables = append(j.Variables, job.Variable{Key: "CI_DEBUG_SERVICES", Value: "true", Public: true},
		job.Variable{Key: "SECRET_TOKEN", Value: "s3cr3t-never-in-a-service", Masked: true})
	j.Services = []job.Service{{
		Image:     serviceImage,
		Aliases:   []string{"db", "airlock-test"},
		Command:   []string{"sh", "-c", `echo "egress $(probe tcp ` + forbidden + `)"; env | grep -c s3cr3t-never; while true; do echo pong | nc -l -p 5432; done`},
		Variables: []job.Variable{{Key: "POSTGRES_DB", Value: "test", Public: true}},
	}}
	run := env.run(t, j, nil)
	if run.res.State != Success {
		t.Fatalf("job: state %s (%s), err %v; output:\n%s", run.res.State, run.res.Reason, run.res.Err, run.out)
	}
	for _, p := range []string{"alias", "derived"} {
		if got := run.probe(t, p); got != "ok connected pong" {
			t.Errorf("probe %s = %q, want ok connected pong; output:\n%s", p, got, run.out)
		}
	}
	var egress string
	for _, l := range strings.Split(run.out, "\n") {
		if i := strings.Index(l, "egress "); i >= 0 && strings.HasPrefix(l, "[service:") {
			egress = l[i:]
		}
	}
	if !strings.HasPrefix(egress, "egress fail") {
		t.Errorf("the service's probe of %s = %q, want a failure; output:\n%s", forbidden, egress, run.out)
	}
	if !strings.Contains(run.out, "] 0\n") {
		t.Errorf("the service's environment held the masked variable; output:\n%s", run.out)
	}
	if strings.Contains(run.out, "probably didn't start properly") {
		t.Errorf("health check warned for a service that listens; output:\n%s", run.out)
	}
	if pooled {
		if st := p.Stats(); st.NetHits != 1 {
			t.Errorf("pool stats %+v: the job claimed no pooled network", st)
		}
	}
}

// Through GitLab: a service that never listens only warns (with its
// logs), and its logs stay out of the job log otherwise.
func TestAgentServiceHealthWarning(t *testing.T) {
	e := newAgentEnv(t)
	makeServiceImage(t)
	r, err := New(Config{RunnerID: e.runnerID, RuntimeDir: e.runtime, Grace: time.Second, Pull: executors.PullNever,
		ServiceWait: 2 * time.Second}, e.ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, stop := startAgent(t, e.config(1), r)
	defer stop()
	spec := gitlabSpec([]string{"echo SCRIPT-RAN"}, nil)
	spec.Services = []fakegitlab.ServiceSpec{{Name: serviceImage, Alias: "quiet", Command: []string{"sh", "-c", "echo service-log-line; sleep 600"}}}
	id := e.gl.Enqueue(spec)
	st := waitJob(t, e.gl, id, 2*time.Minute)
	trace := string(e.gl.Trace(id))
	if st.Status != "success" {
		t.Fatalf("job ended %s/%s, want success\n%s", st.Status, st.FailureReason, trace)
	}
	for _, w := range []string{"probably didn't start properly", "service-log-line", "SCRIPT-RAN"} {
		if !strings.Contains(trace, w) {
			t.Errorf("trace lacks %q:\n%s", w, trace)
		}
	}
	if strings.Contains(trace, "[service:") {
		t.Errorf("service logs streamed into the job log without CI_DEBUG_SERVICES:\n%s", trace)
	}
}

// A service variable that holds a secret (here a masked job variable's
// value, as `$DB_PASSWORD` in a GitLab service's variables expands to)
// reaches the service's process but never the container's configuration:
// `docker inspect` of the service, while it runs, does not show it.
func TestServiceSecretVariableNotInConfig(t *testing.T) {
	env := isoOpen(t)
	makeServiceImage(t)
	const secret = "svc-s3cr3t-4a1b9c77"
	sum := sha256.Sum256([]byte(secret))
	want := hex.EncodeToString(sum[:])[:16]
	j := isoJob("svc-secret", nil, []isoProbe{
		{name: "db", cmd: "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp db:5432 && break; sleep 0.3; done"},
		{cmd: "sleep 2"}, // the test inspects the service meanwhile
	})
	j.Variables = append(j.Variables, job.Variable{Key: "DB_PASSWORD", Value: secret, Masked: true})
	j.Services = []job.Service{{
		Image:   serviceImage,
		Aliases: []string{"db"},
		Command: []string{"sh", "-c", `h=$(printf %s "$POSTGRES_PASSWORD" | sha256sum | cut -c1-16); while true; do echo "$h $POSTGRES_USER" | nc -l -p 5432; done`},
		Variables: []job.Variable{
			{Key: "POSTGRES_PASSWORD", Value: secret, Public: true},
			{Key: "POSTGRES_USER", Value: "tester", Public: true},
		},
	}}

	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	inspected := make(chan []byte, 1)
	go func() {
		f := filters.NewArgs(filters.Arg("label", executors.LabelJob+"=svc-secret"), filters.Arg("label", "io.airlock.service"))
		for ctx.Err() == nil {
			list, err := cli.ContainerList(ctx, container.ListOptions{Filters: f})
			if err == nil && len(list) > 0 {
				if _, raw, err := cli.ContainerInspectWithRaw(ctx, list[0].ID, false); err == nil {
					inspected <- raw
					return
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	run := env.run(t, j, nil)
	cancel()
	if run.res.State != Success {
		t.Fatalf("job: state %s (%s), err %v; output:\n%s", run.res.State, run.res.Reason, run.res.Err, run.out)
	}
	if got := run.probe(t, "db"); got != "ok connected "+want+" tester" {
		t.Errorf("probe db = %q, want the secret's hash and the public variable (%q); output:\n%s", got, "ok connected "+want+" tester", run.out)
	}
	select {
	case raw := <-inspected:
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("docker inspect of the service shows the secret:\n%s", raw)
		}
		if !bytes.Contains(raw, []byte("POSTGRES_USER=tester")) {
			t.Errorf("docker inspect of the service lacks its public variable:\n%s", raw)
		}
	default:
		t.Fatal("the service container was never inspected while the job ran")
	}
}

// A service whose health check the job waits for (GitHub's services): the
// steps start only once the engine calls it healthy, and the log says
// how the wait went; with both executors.
func TestServiceHealthWaited(t *testing.T) { isoEachExecutor(t, testServiceHealthWaited) }

func testServiceHealthWaited(t *testing.T) {
	env := isoOpen(t)
	j := isoJob("svc-health", nil, []isoProbe{{cmd: "echo STEP-RAN"}})
	j.Services = []job.Service{{
		Image:       testenv.TestImage,
		Aliases:     []string{"db"},
		Command:     []string{"sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 600"},
		Health:      &job.HealthCheck{Test: []string{"CMD-SHELL", "test -f /tmp/ready"}, Interval: 300 * time.Millisecond, Retries: 30},
		WaitHealthy: true,
	}}
	run := env.run(t, j, nil)
	if run.res.State != Success {
		t.Fatalf("job: state %s (%s), err %v; output:\n%s", run.res.State, run.res.Reason, run.res.Err, run.out)
	}
	starting := strings.Index(run.out, "db service is starting")
	healthy := strings.Index(run.out, "db service is healthy.")
	step := strings.Index(run.out, "STEP-RAN")
	if starting < 0 || healthy < starting || step < healthy {
		t.Errorf("want the wait (starting, then healthy) before the step; output:\n%s", run.out)
	}
	if strings.Contains(run.out, "probably didn't start properly") {
		t.Errorf("a service its health check passed was dialled and warned for; output:\n%s", run.out)
	}
}

// A service that turns unhealthy fails the job before any step, with
// its logs.
func TestServiceUnhealthyFailsJob(t *testing.T) { isoEachExecutor(t, testServiceUnhealthyFailsJob) }

func testServiceUnhealthyFailsJob(t *testing.T) {
	env := isoOpen(t)
	j := isoJob("svc-unhealthy", nil, []isoProbe{{cmd: "echo STEP-RAN"}})
	j.Services = []job.Service{{
		Image:       testenv.TestImage,
		Aliases:     []string{"db"},
		Command:     []string{"sh", "-c", "echo svc-log-line; exec sleep 600"},
		Health:      &job.HealthCheck{Test: []string{"CMD-SHELL", "exit 1"}, Interval: 200 * time.Millisecond, Retries: 2},
		WaitHealthy: true,
	}}
	run := env.run(t, j, nil)
	if run.res.State == Success || strings.Contains(run.out, "STEP-RAN") {
		t.Fatalf("job: state %s, want a failure before any step; output:\n%s", run.res.State, run.out)
	}
	msg := fmt.Sprint(run.res.Err, run.res.Reason, run.out)
	for _, w := range []string{"db service is unhealthy", "svc-log-line"} {
		if !strings.Contains(msg, w) {
			t.Errorf("result and output lack %q: %s", w, msg)
		}
	}
}
