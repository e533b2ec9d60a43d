package runner

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newTestRunner returns a runner on the real Docker engine with a runner id
// and runtime directory of its own; at cleanup it asserts that no
// container and no runtime directory of the test is left.
func newTestRunner(t *testing.T) *Runner {
	t.Helper()
	testenv.RequireTestImage(t)
	ex, err := docker.New(context.Background(), docker.Config{Grace: time.Second, StepServer: testenv.StepServer(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	id := "t" + hex.EncodeToString(b)
	rt := t.TempDir()
	r, err := New(Config{RunnerID: id, RuntimeDir: rt, Grace: time.Second, Pull: executors.PullNever}, ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		left, err := ex.Leftovers(context.Background(), id)
		if err != nil {
			t.Errorf("listing leftovers: %v", err)
		}
		for _, l := range left {
			t.Errorf("container %s left behind", l.ID)
			ex.Remove(context.Background(), l.ID)
		}
		if ents, _ := os.ReadDir(filepath.Join(rt, "jobs")); len(ents) > 0 {
			t.Errorf("runtime directories left behind: %v", ents)
		}
		ex.Close()
	})
	return r
}

func testJob(id string, script []string, after []string) *job.Job {
	j := &job.Job{ID: id, Source: job.SourceLocal, Image: testenv.TestImage, Timeout: time.Minute,
		Steps: []job.Step{{Name: "script", Script: script, When: job.OnSuccess}}}
	if after != nil {
		j.Steps = append(j.Steps, job.Step{Name: "after_script", Script: after, When: job.Always, Timeout: 30 * time.Second})
	}
	return j
}

func TestRunOutcomes(t *testing.T) {
	r := newTestRunner(t)
	tests := []struct {
		name      string
		job       *job.Job
		state     State
		reason    FailureReason
		exit      int
		steps     []string // "name=exit" or "name=skipped"
		wantOut   []string // in this order
		notOut    []string
		timeout   time.Duration
		variables []job.Variable
	}{
		{
			name:    "success",
			job:     testJob("ok", []string{"echo one", "echo two"}, []string{"echo after"}),
			state:   Success,
			steps:   []string{"script=0", "after_script=0"},
			wantOut: []string{"$ echo one", "one\n", "$ echo two", "two\n", ">>> step after_script", "after\n"},
		},
		{
			name:    "failing step stops the script, after_script runs",
			job:     testJob("fail", []string{"echo before", "exit 3", "echo never"}, []string{"echo cleanup"}),
			state:   Failed,
			reason:  ScriptFailure,
			exit:    3,
			steps:   []string{"script=3", "after_script=0"},
			wantOut: []string{"before\n", "cleanup\n"},
			notOut:  []string{"never\n"},
		},
		{
			name:    "failing after_script does not change a success",
			job:     testJob("afterfail", []string{"true"}, []string{"exit 9"}),
			state:   Success,
			steps:   []string{"script=0", "after_script=9"},
			wantOut: []string{"$ true"},
		},
		{
			name: "variables and file variables",
			job: func() *job.Job {
				j := testJob("vars", []string{`echo "v=$PLAIN"`, `cat "$CONF"`, `echo "id=$CI_JOB_ID"`}, nil)
				j.Variables = []job.Variable{{Key: "PLAIN", Value: "plain value"}, {Key: "CONF", Value: "from a file", File: true}}
				return j
			}(),
			state:   Success,
			steps:   []string{"script=0"},
			wantOut: []string{"v=plain value\n", "from a file", "id=vars\n"},
		},
		{
			name:    "stdin of the script is empty",
			job:     testJob("stdin", []string{"cat", "echo done"}, nil),
			state:   Success,
			steps:   []string{"script=0"},
			wantOut: []string{"done\n"},
		},
		{
			name: "timeout",
			job: func() *job.Job {
				j := testJob("timeout", []string{"echo started", "sleep 300", "echo never"}, []string{"echo after timeout"})
				j.Timeout = 5 * time.Second // container creation counts too
				return j
			}(),
			state:   Failed,
			reason:  JobTimeout,
			steps:   []string{"script=stopped", "after_script=0"},
			wantOut: []string{"started\n", "after timeout\n"},
			notOut:  []string{"never\n"},
		},
		{
			name: "on_failure step runs only after a failure",
			job: func() *job.Job {
				j := testJob("onfail", []string{"true"}, nil)
				j.Steps = append(j.Steps, job.Step{Name: "report", Script: []string{"echo reporting"}, When: job.OnFailure})
				return j
			}(),
			state:  Success,
			steps:  []string{"script=0", "report=skipped"},
			notOut: []string{"reporting"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out lockedBuffer
			res, err := r.Run(context.Background(), tc.job, RunOptions{Out: &out})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.State != tc.state || res.Reason != tc.reason || res.ExitCode != tc.exit {
				t.Errorf("result = %s/%s exit %d (err %v), want %s/%s exit %d", res.State, res.Reason, res.ExitCode, res.Err, tc.state, tc.reason, tc.exit)
			}
			var got []string
			for _, s := range res.Steps {
				switch {
				case s.Skipped:
					got = append(got, s.Name+"=skipped")
				case s.Err != nil:
					got = append(got, s.Name+"=stopped")
				default:
					got = append(got, s.Name+"="+strconv.Itoa(s.ExitCode))
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.steps, " ") {
				t.Errorf("steps = %v, want %v", got, tc.steps)
			}
			o := out.String()
			pos := 0
			for _, w := range tc.wantOut {
				i := strings.Index(o[pos:], w)
				if i < 0 {
					t.Errorf("output lacks %q after position %d:\n%s", w, pos, o)
					break
				}
				pos += i + len(w)
			}
			for _, n := range tc.notOut {
				if strings.Contains(o, n) {
					t.Errorf("output contains %q:\n%s", n, o)
				}
			}
		})
	}
}

func TestRunCancelRunsAfterScript(t *testing.T) {
	r := newTestRunner(t)
	var out lockedBuffer
	cancel := make(chan struct{})
	j := testJob("cancel", []string{"echo started", "sleep 300"}, []string{"echo after cancel"})
	go func() {
		waitOutput(t, &out, "started\n")
		close(cancel)
	}()
	res, err := r.Run(context.Background(), j, RunOptions{Out: &out, Cancel: cancel})
	if err != nil {
		t.Fatal(err)
	}
	if res.State != Canceled || !errors.Is(res.Err, ErrCanceled) {
		t.Errorf("result = %s (%v), want canceled", res.State, res.Err)
	}
	if !strings.Contains(out.String(), "after cancel\n") {
		t.Errorf("after_script did not run after cancel:\n%s", out.String())
	}
}

func TestRunAbortSkipsAfterScript(t *testing.T) {
	r := newTestRunner(t)
	var out lockedBuffer
	ctx, abort := context.WithCancelCause(context.Background())
	j := testJob("abort", []string{"echo started", "sleep 300"}, []string{"echo after abort"})
	go func() {
		waitOutput(t, &out, "started\n")
		abort(ErrAborted)
	}()
	res, err := r.Run(ctx, j, RunOptions{Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if res.State != Canceled {
		t.Errorf("state = %s, want canceled", res.State)
	}
	if strings.Contains(out.String(), "after abort") {
		t.Errorf("after_script ran after an abort:\n%s", out.String())
	}
	if n := len(res.Steps); n != 2 || !res.Steps[1].Skipped {
		t.Errorf("steps = %+v, want after_script skipped", res.Steps)
	}
}

func TestRunRefusesUndeliverable(t *testing.T) {
	r := newTestRunner(t)
	tests := []struct {
		name string
		mod  func(*job.Job)
		want string
	}{
		{"secrets", func(j *job.Job) { j.Secrets = []job.SecretRequest{{Name: "deploy-token"}} }, "deploy-token"},
		{"egress", func(j *job.Job) { j.Egress = []string{"api.allowed.test:443"} }, "api.allowed.test:443"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := testJob("refuse-"+tc.name, []string{"echo ran"}, nil)
			tc.mod(j)
			var out lockedBuffer
			res, err := r.Run(context.Background(), j, RunOptions{Out: &out})
			if err != nil {
				t.Fatal(err)
			}
			var denied *DeniedError
			if res.State != Failed || res.Reason != Unauthorized || !errors.As(res.Err, &denied) || !strings.Contains(res.Err.Error(), tc.want) {
				t.Errorf("result = %s/%s %v, want a refusal naming %q", res.State, res.Reason, res.Err, tc.want)
			}
			if strings.Contains(out.String(), "ran") {
				t.Errorf("job code ran despite the refusal")
			}
		})
	}
}

func TestRunMissingImage(t *testing.T) {
	r := newTestRunner(t)
	j := testJob("noimage", []string{"true"}, nil)
	j.Image = "airlock-test:missing"
	res, err := r.Run(context.Background(), j, RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.State != Failed || res.Reason != ImagePullFailure {
		t.Errorf("result = %s/%s (%v), want failed/image_pull_failure", res.State, res.Reason, res.Err)
	}
}

func waitOutput(t *testing.T, out *lockedBuffer, s string) {
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), s) {
		if time.Now().After(deadline) {
			t.Errorf("output %q did not appear", s)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
