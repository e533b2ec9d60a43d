package runner

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

// benchSteps alternates a command in the job's container with the same
// command in a step's own container (ExecContainer, the workspace copied
// in and back) and times each.
type benchSteps struct {
	n               int
	exec, container []time.Duration
	err             error
}

const benchWorkspace = `mkdir -p ws /tmp/fc && head -c 1048576 /dev/urandom > ws/blob && for i in $(seq 100); do echo $i > ws/f$i; done && for f in env output state path summary; do : > /tmp/fc/$f; done`

func (d *benchSteps) Begin(ctx context.Context, h StepHost) error { return nil }
func (d *benchSteps) Len() int                                    { return 1 + 2*d.n }
func (d *benchSteps) Name(i int) string                           { return fmt.Sprintf("step-%d", i) }
func (d *benchSteps) Decide(ctx context.Context, i int, st job.RunStatus) (bool, error) {
	return d.err == nil, nil
}
func (d *benchSteps) End(ctx context.Context, st job.RunStatus, h StepHost) error { return nil }

func (d *benchSteps) Run(ctx context.Context, i int, h StepHost) (job.StepResult, bool) {
	cmd := "cat ws/blob ws/f1 > /dev/null"
	t0 := time.Now()
	var code int
	var err error
	switch {
	case i == 0:
		code, err = h.Exec(ctx, job.StepExec{Cmd: []string{"/bin/sh", "-c", benchWorkspace}})
	case i%2 == 1:
		code, err = h.Exec(ctx, job.StepExec{Cmd: []string{"/bin/sh", "-c", cmd}})
		d.exec = append(d.exec, time.Since(t0))
	default:
		code, err = h.(job.ContainerStepHost).ExecContainer(ctx, job.ContainerExec{
			Name: fmt.Sprintf("bench-%d", i), Image: testenv.TestImage, Entrypoint: []string{"/bin/sh"},
			Args: []string{"-c", "cd /github/workspace && " + cmd}, Root: "/github", WorkDir: "/github",
			// As a Docker action's: the workspace and the file commands.
			In:  []job.DirCopy{{From: h.WorkDir() + "/ws", To: "/github/workspace/ws"}, {From: "/tmp/fc", To: "/github/fc"}},
			Out: []job.DirCopy{{From: "/github/workspace/ws", To: h.WorkDir() + "/ws"}, {From: "/github/fc", To: "/tmp/fc"}},
		})
		d.container = append(d.container, time.Since(t0))
	}
	if err == nil && code != 0 {
		err = fmt.Errorf("step %d exited %d", i, code)
	}
	if err != nil && d.err == nil {
		d.err = err
	}
	return job.StepResult{ExitCode: code, Err: err}, err != nil
}

// BenchmarkContainerStep: what a step in its own container (a GitHub
// Docker action) costs against the same command exec'd in the job's
// container, with a 1 MiB + 100-file workspace and five file-command
// files copied in and back, and against a bare docker run of the image.
func BenchmarkContainerStep(b *testing.B) {
	testenv.RequireTestImage(b)
	ex, err := docker.New(context.Background(), docker.Config{Grace: time.Second, StepServer: testenv.StepServer(b)}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ex.Close()
	r, err := New(Config{RunnerID: "bench-sibling", RuntimeDir: b.TempDir(), Grace: time.Second, Pull: executors.PullNever}, ex, nil)
	if err != nil {
		b.Fatal(err)
	}
	d := &benchSteps{n: 8}
	for range b.N {
		j := &job.Job{ID: "bench-sibling", Source: job.SourceLocal, Image: testenv.TestImage, Timeout: 5 * time.Minute,
			Steps: []job.Step{{Name: "unused", Script: []string{"true"}, When: job.OnSuccess}}}
		if _, err := r.Run(context.Background(), j, RunOptions{Out: io.Discard, Driver: d}); err != nil {
			b.Fatal(err)
		}
		if d.err != nil {
			b.Fatal(d.err)
		}
	}
	// The baseline GitHub's own runner pays per Docker action: a bare
	// docker run of the image (no workspace copy, no sandbox).
	var run []time.Duration
	for range 8 {
		t0 := time.Now()
		if out, err := exec.Command("docker", "run", "--rm", "--pull", "never", "--network", "none", testenv.TestImage, "true").CombinedOutput(); err != nil {
			b.Fatalf("docker run: %v: %s", err, out)
		}
		run = append(run, time.Since(t0))
	}
	e, c, dr := isoPercentileMS(d.exec, 50), isoPercentileMS(d.container, 50), isoPercentileMS(run, 50)
	b.ReportMetric(e, "exec-p50-ms")
	b.ReportMetric(c, "container-step-p50-ms")
	b.ReportMetric(dr, "docker-run-p50-ms")
	if e > 0 && dr > 0 {
		b.ReportMetric(c/e, "ratio-exec")
		b.ReportMetric(c/dr, "ratio-docker-run")
	}
}
