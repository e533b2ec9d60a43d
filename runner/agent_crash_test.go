package runner

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/atomicfile"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/gitlab"
)

// Environment of the child agent TestAgentRecoversAfterSIGKILL starts.
const (
	crashChildEnv   = "AIRLOCK_TEST_AGENT_CHILD"
	crashURLEnv     = "AIRLOCK_TEST_AGENT_URL"
	crashTokenEnv   = "AIRLOCK_TEST_AGENT_TOKEN"
	crashStateEnv   = "AIRLOCK_TEST_AGENT_STATE"
	crashRuntimeEnv = "AIRLOCK_TEST_AGENT_RUNTIME"
	crashIDEnv      = "AIRLOCK_TEST_AGENT_RUNNER_ID"
)

// TestAgentCrashChild is the child agent of TestAgentRecoversAfterSIGKILL:
// it does nothing unless started by it, and then serves jobs until killed.
func TestAgentCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		return // only as the child of TestAgentRecoversAfterSIGKILL
	}
	ex, err := docker.New(context.Background(), docker.Config{Grace: time.Second, StepServer: testenv.StepServer(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{RunnerID: os.Getenv(crashIDEnv), RuntimeDir: os.Getenv(crashRuntimeEnv),
		Grace: time.Second, Pull: executors.PullNever}, ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAgent(agentTestConfig{
		AgentConfig: AgentConfig{
			CheckInterval: 100 * time.Millisecond,
			StateDir:      os.Getenv(crashStateEnv),
			Logger:        hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: os.Stderr, Name: "child"}),
		},
		// The same name as the parent's runner: the parent resumes the
		// child's journal records.
		Runners:       []gitlab.RunnerConfig{{Name: "test", URL: os.Getenv(crashURLEnv), Token: os.Getenv(crashTokenEnv)}},
		TraceInterval: 200 * time.Millisecond,
	}.build(t), r)
	if err != nil {
		t.Fatal(err)
	}
	a.Run(context.Background()) // until SIGKILL
}

func TestAgentRecoversAfterSIGKILL(t *testing.T) {
	e := newAgentEnv(t)
	id := e.gl.Enqueue(gitlabSpec([]string{"echo started", "sleep 300"}, nil))

	var childOut bytes.Buffer
	child := exec.Command(os.Args[0], "-test.run=^TestAgentCrashChild$", "-test.count=1")
	child.Env = append(os.Environ(), crashChildEnv+"=1", crashURLEnv+"="+e.gl.URL, crashTokenEnv+"="+e.token,
		crashStateEnv+"="+e.stateDir, crashRuntimeEnv+"="+e.runtime, crashIDEnv+"="+e.runnerID)
	child.Stdout, child.Stderr = &childOut, &childOut
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			child.Process.Kill()
			child.Wait()
		}
	})
	waitTrace(t, e.gl, id, "started\n", 2*time.Minute)

	left, err := e.ex.Leftovers(context.Background(), e.runnerID)
	if err != nil || len(left) != 1 {
		t.Fatalf("containers of the child before the kill: %v, %v; want 1\nchild:\n%s", left, err, childOut.String())
	}
	if err := child.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	child.Wait()
	killed = true
	token := e.gl.Job(id).Token
	if hits := filesContaining(t, e.stateDir, token); len(hits) > 0 {
		t.Errorf("the job token is on disk in plaintext: %v", hits)
	}
	// A record write the kill cut short may have left a temporary file
	// beside the record (recovery removes it, checked at the end).
	temps, _ := atomicfile.TempsIn(filepath.Join(e.stateDir, agentJournalDir))
	if ents, _ := os.ReadDir(filepath.Join(e.stateDir, agentJournalDir)); len(ents)-len(temps) != 1 {
		t.Errorf("journal after the crash holds %d records (and %d interrupted writes), want 1", len(ents)-len(temps), len(temps))
	}

	cfg := e.config(1)
	var recovered []string
	// As Runner.Recover does for a runner built by Open: remove the
	// containers, hand back a sealed trail to upload.
	trail := filepath.Join(t.TempDir(), "trail.jsonl")
	if err := os.WriteFile(trail, []byte(`{"seq":1,"type":"runner_crashed"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.RecoverLocal = func(ctx context.Context) ([]Recovered, error) {
		left, err := e.ex.Leftovers(ctx, e.runnerID)
		if err != nil {
			return nil, err
		}
		var out []Recovered
		for _, l := range left {
			if err := e.ex.RemoveLeftover(ctx, l); err != nil {
				return out, err
			}
			recovered = append(recovered, l.JobID)
			out = append(out, Recovered{JobID: l.JobID, Trail: trail})
		}
		sort.Strings(recovered)
		return out, nil
	}
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()
	st := waitJob(t, e.gl, id, time.Minute)
	if st.Status != "failed" || st.FailureReason != "runner_system_failure" {
		t.Errorf("crashed job ended %s/%q, want failed/runner_system_failure", st.Status, st.FailureReason)
	}
	if trace := e.gl.Trace(id); !bytes.Contains(trace, []byte("stopped unexpectedly")) {
		t.Errorf("crashed job's trace does not say what happened:\n%s", trace)
	}
	// The report continues the trace the job had sent: the log before the
	// crash is kept (it used to be rewritten from offset 0).
	if trace := e.gl.Trace(id); !bytes.Contains(trace, []byte("started\n")) ||
		bytes.Index(trace, []byte("started\n")) > bytes.Index(trace, []byte("stopped unexpectedly")) {
		t.Errorf("crashed job's trace lost the log sent before the crash:\n%s", trace)
	}
	if len(recovered) != 1 || recovered[0] != gitlab.JobID(e.gl.URL, id) {
		t.Errorf("RecoverLocal cleaned up jobs %v, want [%d]", recovered, id)
	}
	if arts := e.gl.Artifacts(id); len(arts) != 1 || arts[0].Name != gitlab.AuditArtifact || arts[0].Format != "zip" {
		t.Errorf("artifacts of the crashed job: %+v, want its audit trail", arts)
	}
	if left, err := e.ex.Leftovers(context.Background(), e.runnerID); err != nil || len(left) != 0 {
		t.Errorf("containers of runner %s after recovery: %v, %v; want none", e.runnerID, left, err)
	}
	stop()
	if ents, _ := os.ReadDir(filepath.Join(e.stateDir, agentJournalDir)); len(ents) != 0 {
		t.Errorf("journal after recovery holds %d records, want 0", len(ents))
	}
}
