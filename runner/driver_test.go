package runner

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

// scriptDriver runs each job step's first script line with sh -c and
// records what the runner asked, the way a coordinator's driver would.
type scriptDriver struct {
	steps    []job.Step
	fails    map[string]bool // steps whose failure fails the job
	onlyFail map[string]bool // steps that run only after a failure
	always   map[string]bool // steps that run even after a cancel
	statuses map[string]job.RunStatus
	post     bool // add a post step after the first step ran
	begun    bool
	ended    *job.RunStatus
	stdout   map[string]string
}

func (d *scriptDriver) Begin(ctx context.Context, h StepHost) error {
	d.begun = true
	host, _ := h.RuntimeDir()
	return os.WriteFile(filepath.Join(host, "driver-file"), []byte("from the host\n"), 0o444)
}
func (d *scriptDriver) Len() int          { return len(d.steps) }
func (d *scriptDriver) Name(i int) string { return d.steps[i].Name }
func (d *scriptDriver) Decide(ctx context.Context, i int, st job.RunStatus) (bool, error) {
	n := d.steps[i].Name
	d.statuses[n] = st
	switch {
	case d.always[n]:
		return true, nil
	case st.Canceled:
		return false, nil
	case d.onlyFail[n]:
		return st.Failed, nil
	}
	return !st.Failed, nil
}
func (d *scriptDriver) Run(ctx context.Context, i int, h StepHost) (job.StepResult, bool) {
	s := d.steps[i]
	var out bytes.Buffer
	code, err := h.Exec(ctx, job.StepExec{
		Cmd: []string{"/bin/sh", "-c", s.Script[0]},
		Env: []string{"STEP=" + s.Name, "CI=overridden"},
	})
	if s.Name == "capture" {
		_, err = h.Exec(ctx, job.StepExec{Cmd: []string{"cat", "/run/airlock/driver-file"}, Stdout: &out})
		d.stdout[s.Name] = out.String()
	}
	if s.Name == "mask" {
		h.Mask("run-time-secret-value")
	}
	if d.post && i == 0 {
		d.steps = append(d.steps, job.Step{Name: "post", Script: []string{"echo post ran"}})
	}
	return job.StepResult{ExitCode: code, Err: err}, code != 0 && d.fails[s.Name]
}
func (d *scriptDriver) End(ctx context.Context, st job.RunStatus, h StepHost) error {
	d.ended = &st
	return nil
}

func newScriptDriver(steps ...job.Step) *scriptDriver {
	return &scriptDriver{steps: steps, fails: map[string]bool{}, onlyFail: map[string]bool{},
		always: map[string]bool{}, statuses: map[string]job.RunStatus{}, stdout: map[string]string{}}
}

func TestRunDriven(t *testing.T) {
	testenv.RequireDocker(t)
	r := newTestRunner(t)
	d := newScriptDriver(
		job.Step{Name: "capture", Script: []string{`echo "step=$STEP ci=$CI"`}},
		job.Step{Name: "mask", Script: []string{"true"}},
		job.Step{Name: "may-fail", Script: []string{"echo run-time-secret-value; exit 3"}},
		job.Step{Name: "fails", Script: []string{"exit 4"}},
		job.Step{Name: "skipped", Script: []string{"echo must not run"}},
		job.Step{Name: "on-failure", Script: []string{"echo failure handler"}},
	)
	d.fails["fails"] = true
	d.onlyFail["on-failure"] = true
	d.post = true
	d.always["post"] = true
	j := testJob("driven", []string{"unused"}, nil)
	var out lockedBuffer
	res, err := r.Run(context.Background(), j, RunOptions{Out: &out, Driver: d})
	if err != nil {
		t.Fatal(err)
	}
	log := out.String()
	if res.State != Failed || res.Reason != ScriptFailure || res.ExitCode != 4 {
		t.Errorf("result = %s %s %d (%v), want failed script_failure 4\n%s", res.State, res.Reason, res.ExitCode, res.Err, log)
	}
	if !d.begun || d.ended == nil || !d.ended.Failed {
		t.Errorf("Begin/End not called as expected: begun %v, ended %+v", d.begun, d.ended)
	}
	if got := d.stdout["capture"]; got != "from the host\n" {
		t.Errorf("file written in Begin read in the container as %q", got)
	}
	if !strings.Contains(log, "step=capture ci=overridden") {
		t.Errorf("step env not merged (later key wins):\n%s", log)
	}
	if strings.Contains(log, "run-time-secret-value") {
		t.Errorf("value masked at run time shown:\n%s", log)
	}
	if strings.Contains(log, "must not run") || !strings.Contains(log, "failure handler") {
		t.Errorf("conditions not honoured:\n%s", log)
	}
	if !strings.Contains(log, "post ran") {
		t.Errorf("step added while running did not run:\n%s", log)
	}
	want := []struct {
		name    string
		skipped bool
		code    int
	}{{"capture", false, 0}, {"mask", false, 0}, {"may-fail", false, 3}, {"fails", false, 4}, {"skipped", true, -1}, {"on-failure", false, 0}, {"post", false, 0}}
	if len(res.Steps) != len(want) {
		t.Fatalf("steps = %+v", res.Steps)
	}
	for i, w := range want {
		s := res.Steps[i]
		if s.Name != w.name || s.Skipped != w.skipped || s.ExitCode != w.code {
			t.Errorf("step %d = %+v, want %+v", i, s, w)
		}
	}
	if st := d.statuses["fails"]; st.Failed {
		t.Error("a step that may fail failed the job")
	}
}

func TestRunDrivenCancel(t *testing.T) {
	testenv.RequireDocker(t)
	r := newTestRunner(t)
	d := newScriptDriver(
		job.Step{Name: "long", Script: []string{"echo started; sleep 30"}},
		job.Step{Name: "normal", Script: []string{"echo must not run"}},
		job.Step{Name: "cleanup", Script: []string{"echo cleanup ran"}},
	)
	d.always["cleanup"] = true
	j := testJob("driven-cancel", []string{"unused"}, nil)
	cancel := make(chan struct{})
	var out lockedBuffer
	go func() {
		for !strings.Contains(out.String(), "started") {
			time.Sleep(20 * time.Millisecond)
		}
		close(cancel)
	}()
	res, err := r.Run(context.Background(), j, RunOptions{Out: &out, Driver: d, Cancel: cancel})
	if err != nil {
		t.Fatal(err)
	}
	if res.State != Canceled {
		t.Errorf("state = %s (%v), want canceled", res.State, res.Err)
	}
	log := out.String()
	if strings.Contains(log, "must not run") || !strings.Contains(log, "cleanup ran") {
		t.Errorf("after a cancel only the always step should run:\n%s", log)
	}
	if st := d.statuses["cleanup"]; !st.Canceled {
		t.Errorf("cleanup decided with %+v, want Canceled", st)
	}
}
