package github

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/containerd"
	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/job"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newDockerRunner returns a runner on the real Docker engine; at cleanup
// it asserts that no container of the test is left.
func newDockerRunner(t *testing.T) *runner.Runner {
	t.Helper()
	testenv.RequireTestImage(t)
	ex, err := docker.New(context.Background(), docker.Config{Grace: time.Second, StepServer: testenv.StepServer(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return newRunnerOn(t, ex)
}

// newContainerdRunner is newDockerRunner with the containerd executor,
// in a containerd namespace of the test's own.
func newContainerdRunner(t *testing.T) *runner.Runner {
	t.Helper()
	testenv.RequireTestImage(t)
	ex, err := containerd.New(context.Background(), containerd.Config{Address: testenv.ContainerdSocket(),
		Namespace: testenv.ContainerdNamespace(t), Pull: string(executors.PullNever), Grace: time.Second,
		StepServer: testenv.StepServer(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return newRunnerOn(t, ex)
}

// testExecutor is what newRunnerOn needs of an executor.
type testExecutor interface {
	executors.Executor
	executors.Reaper
	Close() error
}

// newRunnerOn is a runner on ex with an id of its own; at cleanup it
// fails the test for any container or runtime directory left.
func newRunnerOn(t *testing.T, ex testExecutor) *runner.Runner {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	id := "gh" + hex.EncodeToString(b)
	rt := t.TempDir()
	r, err := runner.New(runner.Config{RunnerID: id, RuntimeDir: rt, Grace: time.Second, Pull: executors.PullNever}, ex, nil)
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
			ex.RemoveLeftover(context.Background(), l)
		}
		if ents, _ := os.ReadDir(filepath.Join(rt, "jobs")); len(ents) > 0 {
			t.Errorf("runtime directories left behind: %v", ents)
		}
		ex.Close()
	})
	return r
}

func lit(s string) *TemplateToken     { return &TemplateToken{Type: TokenString, Lit: s} }
func exprTok(s string) *TemplateToken { return &TemplateToken{Type: TokenExpression, Expr: s} }
func mapping(kv ...any) *TemplateToken {
	t := &TemplateToken{Type: TokenMapping}
	for i := 0; i+1 < len(kv); i += 2 {
		v, ok := kv[i+1].(*TemplateToken)
		if !ok {
			v = lit(kv[i+1].(string))
		}
		t.Map = append(t.Map, MapEntry{Key: lit(kv[i].(string)), Value: v})
	}
	return t
}

// testMessage builds a job message the way the service sends one.
func testMessage(image string, steps ...Step) *AgentJobRequestMessage {
	m := &AgentJobRequestMessage{
		Plan:  Plan{PlanID: "plan-1"},
		JobID: "job-" + hex.EncodeToString([]byte{byte(len(steps))}),
		Resources: Resources{Endpoints: []Endpoint{{Name: "SystemVssConnection", URL: "http://127.0.0.1:9/run/",
			Authorization: Authorization{Scheme: "OAuth", Parameters: map[string]string{"AccessToken": "job-token-value-0123456789"}}}}},
		Variables: Variables{
			"system.github.token": {Value: "ghs_testtoken0123456789abcdef", IsSecret: true},
			"DEPLOY_KEY":          {Value: "deploy-secret-value-42", IsSecret: true},
			"PIN":                 {Value: "4711", IsSecret: true}, // too short to mask: said in the log
		},
		ContextData: ContextMap{
			"github": Dict("event_name", "push", "repository", "acme/app", "ref", "refs/heads/main", "ref_name", "main",
				"sha", "0123456789abcdef0123456789abcdef01234567", "run_number", "7", "event", Dict("forced", false)),
			"matrix": Dict("os", "linux"),
		},
		JobContainer: lit(image),
		Steps:        steps,
	}
	return m
}

var stepN int

func runStep(id, name string, script *TemplateToken, more ...func(*Step)) Step {
	stepN++
	s := Step{Type: Enum("action"), ID: "00000000-0000-0000-0000-" + hex.EncodeToString([]byte{0, 0, 0, 0, 0, byte(stepN)}),
		ContextName: id, DisplayName: name, Condition: "success()",
		Reference: ActionReference{Type: Enum("script")},
		Inputs:    mapping("script", script)}
	for _, f := range more {
		f(&s)
	}
	return s
}

func runDriven(t *testing.T, m *AgentJobRequestMessage, edit func(*job.Job), o DriverOptions) (*runner.Result, *Driver, string) {
	t.Helper()
	return runDrivenOn(t, newDockerRunner(t), m, edit, o)
}

// runDrivenOn is runDriven on runner r.
func runDrivenOn(t *testing.T, r *runner.Runner, m *AgentJobRequestMessage, edit func(*job.Job), o DriverOptions) (*runner.Result, *Driver, string) {
	t.Helper()
	j, err := m.ToJob(ConvertOptions{IDPrefix: "gh"})
	if err != nil {
		t.Fatalf("ToJob: %v", err)
	}
	if edit != nil {
		edit(j)
	}
	d := NewDriver(m, j, o)
	var out syncBuffer
	res, err := r.Run(context.Background(), j, runner.RunOptions{Out: &out, Driver: d, Mask: m.MaskValues()})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res, d, out.String()
}

func TestDriverRunSteps(t *testing.T) {
	testenv.RequireDocker(t)
	m := testMessage(testenv.TestImage,
		runStep("set", "Set things", lit(strings.Join([]string{
			`echo "FOO=bar" >> "$GITHUB_ENV"`,
			`{ echo 'MULTI<<EOF'; echo line1; echo line2; echo EOF; } >> "$GITHUB_ENV"`,
			`echo "v=42" >> "$GITHUB_OUTPUT"`,
			`{ echo 'long<<XYZ'; echo a; echo b; echo XYZ; } >> "$GITHUB_OUTPUT"`,
			`mkdir -p /tmp/bin && printf '#!/bin/sh\necho tool-ran\n' > /tmp/bin/mytool && chmod +x /tmp/bin/mytool`,
			`echo /tmp/bin >> "$GITHUB_PATH"`,
			`echo "::add-mask::hidden-value-123"`,
			`echo "value is hidden-value-123"`,
			`echo "::warning file=a.go,line=3,title=Care::careful%0Anow"`,
			`echo "::group::My group"; echo inside; echo "::endgroup::"`,
			`echo "::debug::not shown"`,
			`echo "::stop-commands::pause-token-1"; echo "::error::not a command now"; echo "::pause-token-1::"`,
			`echo "# Summary" >> "$GITHUB_STEP_SUMMARY"`,
			`echo "token is $TOKEN"`,
		}, "\n")), func(s *Step) { s.Environment = mapping("TOKEN", exprTok("secrets.DEPLOY_KEY")) }),
		runStep("use", "Use them", exprTok(`format('echo "foo=$FOO multi=$(echo "$MULTI" | tr ''\n'' ,) out={0} long={1}"; mytool; echo "ws=$GITHUB_WORKSPACE ci=$CI ev=$GITHUB_EVENT_NAME repo=$GITHUB_REPOSITORY"; test -f "$GITHUB_EVENT_PATH" && echo event-file-ok', steps.set.outputs.v, steps.set.outputs.long)`)),
		runStep("wd", "Work dir", lit(`pwd`), func(s *Step) {
			s.Inputs = mapping("script", lit("pwd"), "workingDirectory", lit("sub"))
		}),
		runStep("mayfail", "May fail", lit("exit 3"), func(s *Step) { s.ContinueOnError = &TemplateToken{Type: TokenBoolean, Bool: true} }),
		runStep("fail", "Fails", lit("echo failing; exit 5")),
		runStep("never", "Never", lit("echo should-not-run")),
		runStep("onfail", "On failure", exprTok(`format('echo failure-ran {0} {1}', steps.fail.outcome, steps.mayfail.conclusion)`), func(s *Step) { s.Condition = "failure()" }),
		runStep("", "", lit("echo always-ran"), func(s *Step) { s.Condition = "always()" }),
	)
	m.JobOutputs = mapping("version", exprTok("steps.set.outputs.v"), "leak", exprTok("secrets.DEPLOY_KEY"))
	res, d, log := runDriven(t, m, func(j *job.Job) {
		// The working directory must exist: the first step makes it.
		j.Steps[0].Run = "mkdir -p sub\n" + j.Steps[0].Run
	}, DriverOptions{})

	if res.State != runner.Failed || res.Reason != runner.ScriptFailure || res.ExitCode != 5 {
		t.Errorf("result = %s %s %d (%v), want failed script_failure 5", res.State, res.Reason, res.ExitCode, res.Err)
	}
	for _, want := range []string{
		"foo=bar multi=line1,line2, out=42 long=a\nb", "tool-ran", "ws=/builds ci=true ev=push repo=acme/app", "event-file-ok",
		"##[warning]careful\nnow", "##[group]My group\ninside\n##[endgroup]", "::error::not a command now",
		"/builds/sub\n", "failing", "failure-ran failure success", "always-ran",
		"##[warning]1 of this job's secret values are shorter than 8 characters",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	for _, bad := range []string{"hidden-value-123", "::add-mask::", "deploy-secret-value-42", "should-not-run", "not shown", "pause-token-1"} {
		if strings.Contains(log, bad) {
			t.Errorf("log shows %q:\n%s", bad, log)
		}
	}
	rep := d.Report()
	if rep.Outputs["version"] != "42" {
		t.Errorf("job outputs = %v, want version=42", rep.Outputs)
	}
	if _, ok := rep.Outputs["leak"]; ok {
		t.Error("an output holding a secret was kept")
	}
	if !strings.Contains(log, "Skip output 'leak'") {
		t.Errorf("no warning for the dropped output:\n%s", log)
	}
	if len(rep.Annotations) != 1 || rep.Annotations[0].Level != "warning" || rep.Annotations[0].File != "a.go" || rep.Annotations[0].Line != 3 || rep.Annotations[0].Title != "Care" {
		t.Errorf("annotations = %+v", rep.Annotations)
	}
	if len(rep.Summaries) != 1 || rep.Summaries[0].Markdown != "# Summary\n" {
		t.Errorf("summaries = %+v", rep.Summaries)
	}
	want := map[string][2]string{"Set things": {"success", "success"}, "May fail": {"failure", "success"}, "Fails": {"failure", "failure"}, "Never": {"skipped", "skipped"}}
	for _, s := range rep.Steps {
		if w, ok := want[s.Name]; ok && (s.Outcome != w[0] || s.Conclusion != w[1]) {
			t.Errorf("step %s: %s/%s, want %s/%s", s.Name, s.Outcome, s.Conclusion, w[0], w[1])
		}
	}
	if len(rep.Steps) != 8 {
		t.Errorf("%d step reports, want 8", len(rep.Steps))
	}
}

func TestDriverStepTimeout(t *testing.T) {
	testenv.RequireDocker(t)
	m := testMessage(testenv.TestImage,
		runStep("slow", "Slow", lit("echo slow-started; sleep 60; echo not-reached")),
		runStep("next", "Next", lit("echo must-not-run")),
		runStep("cleanup", "Cleanup", exprTok(`format('echo cleanup {0}', steps.slow.outcome)`), func(s *Step) { s.Condition = "always()" }),
	)
	res, d, log := runDriven(t, m, func(j *job.Job) {
		// timeout-minutes is whole minutes; the converted step carries a
		// Duration, shortened here so the test does not wait a minute.
		j.Steps[0].Timeout = 2 * time.Second
	}, DriverOptions{})
	if res.State != runner.Failed || res.Reason != runner.JobTimeout {
		t.Errorf("result = %s %s (%v), want failed job_execution_timeout", res.State, res.Reason, res.Err)
	}
	if res.Err == nil || !strings.Contains(res.Err.Error(), "step Slow: the step timed out after 2s") {
		t.Errorf("error = %v, want it to name the step and its timeout", res.Err)
	}
	if !strings.Contains(log, "slow-started") || strings.Contains(log, "not-reached") || strings.Contains(log, "must-not-run") || !strings.Contains(log, "cleanup failure") {
		t.Errorf("log:\n%s", log)
	}
	if st := d.Report().Steps[0]; st.Outcome != "failure" {
		t.Errorf("timed-out step outcome = %s, want failure", st.Outcome)
	}
}

func TestDriverTimeoutWithContinueOnError(t *testing.T) {
	testenv.RequireDocker(t)
	m := testMessage(testenv.TestImage,
		runStep("slow", "Slow", lit("sleep 60"), func(s *Step) { s.ContinueOnError = exprTok("matrix.os == 'linux'") }),
		runStep("next", "Next", lit("echo next-ran")),
	)
	res, _, log := runDriven(t, m, func(j *job.Job) { j.Steps[0].Timeout = time.Second }, DriverOptions{})
	if res.State != runner.Success || !strings.Contains(log, "next-ran") {
		t.Errorf("result = %s (%v), want success: the timed-out step may fail\n%s", res.State, res.Err, log)
	}
}

func TestDriverCancel(t *testing.T) {
	testenv.RequireDocker(t)
	r := newDockerRunner(t)
	m := testMessage(testenv.TestImage,
		runStep("long", "Long", lit("echo long-started; sleep 60")),
		runStep("normal", "Normal", lit("echo must-not-run")),
		runStep("failonly", "Failure only", lit("echo failure-only-must-not-run"), func(s *Step) { s.Condition = "failure()" }),
		runStep("always", "Always", exprTok(`format('echo always-ran {0} {1}', steps.long.outcome, job.status)`), func(s *Step) { s.Condition = "always()" }),
		runStep("oncancel", "On cancel", lit("echo cancelled-ran"), func(s *Step) { s.Condition = "cancelled()" }),
	)
	j, err := m.ToJob(ConvertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDriver(m, j, DriverOptions{})
	var out syncBuffer
	cancel := make(chan struct{})
	go func() {
		for !strings.Contains(out.String(), "long-started") {
			time.Sleep(20 * time.Millisecond)
		}
		close(cancel)
	}()
	res, err := r.Run(context.Background(), j, runner.RunOptions{Out: &out, Driver: d, Cancel: cancel})
	if err != nil {
		t.Fatal(err)
	}
	log := out.String()
	if res.State != runner.Canceled {
		t.Errorf("state = %s (%v), want canceled", res.State, res.Err)
	}
	for _, w := range []string{"always-ran cancelled cancelled", "cancelled-ran"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	if strings.Contains(log, "must-not-run") {
		t.Errorf("a step that does not run on cancel ran:\n%s", log)
	}
	if st := d.Report().Steps[0]; st.Outcome != "cancelled" || st.Conclusion != "cancelled" {
		t.Errorf("running step reported %s/%s, want cancelled", st.Outcome, st.Conclusion)
	}
}

func TestDriverHashFiles(t *testing.T) {
	testenv.RequireDocker(t)
	m := testMessage(testenv.TestImage,
		runStep("mk", "Make files", lit(`mkdir -p a/b c && printf one > a/x.txt && printf two > a/b/y.txt && printf three > c/z.go`)),
		runStep("h", "Hash", exprTok(`format('echo "txt={0} none={1} notb={2}"', hashFiles('**/*.txt'), hashFiles('*.nope'), hashFiles('**/*.txt', '!a/b/**'))`)),
	)
	res, _, log := runDriven(t, m, nil, DriverOptions{})
	if res.State != runner.Success {
		t.Fatalf("result = %s (%v)\n%s", res.State, res.Err, log)
	}
	digest := func(contents ...string) string {
		all := sha256.New()
		for _, c := range contents {
			s := sha256.Sum256([]byte(c))
			all.Write(s[:])
		}
		return hex.EncodeToString(all.Sum(nil))
	}
	// Sorted paths: a/b/y.txt before a/x.txt.
	want := fmt.Sprintf("txt=%s none= notb=%s", digest("two", "one"), digest("one"))
	if !strings.Contains(log, want) {
		t.Errorf("log lacks %q:\n%s", want, log)
	}
}

func TestDriverShells(t *testing.T) {
	img := testenv.RequireNodeImage(t) // busybox, node and bash
	steps := func() []Step {
		return []Step{
			runStep("default", "Default shell", lit(`echo "default bash=${BASH_VERSION:+yes}"`)),
			runStep("bash", "Bash pipefail", lit(`false | true`), func(s *Step) {
				s.Inputs = mapping("script", lit("false | true\necho not-reached-pipefail"), "shell", lit("bash"))
				s.ContinueOnError = &TemplateToken{Type: TokenBoolean, Bool: true}
			}),
			runStep("sh", "Sh -e", lit(""), func(s *Step) {
				s.Inputs = mapping("script", lit("false\necho not-reached-sh-e"), "shell", lit("sh"))
				s.ContinueOnError = &TemplateToken{Type: TokenBoolean, Bool: true}
			}),
			runStep("custom", "Custom", lit(""), func(s *Step) {
				s.Inputs = mapping("script", lit("console.log('custom shell ran ' + __filename.startsWith('/tmp/airlock-runner/'))"), "shell", lit("node {0}"))
			}),
		}
	}
	_, _, log := runDriven(t, testMessage(img, steps()...), nil, DriverOptions{})
	for _, w := range []string{"default bash=yes", "custom shell ran true"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	for _, bad := range []string{"not-reached-pipefail", "not-reached-sh-e"} {
		if strings.Contains(log, bad) {
			t.Errorf("log shows %q:\n%s", bad, log)
		}
	}
	// Without bash in the image the default is sh -e.
	_, _, log = runDriven(t, testMessage(testenv.TestImage, steps()[0]), nil, DriverOptions{})
	if !strings.Contains(log, "default bash=\n") {
		t.Errorf("busybox image: default shell is not sh:\n%s", log)
	}
}

func TestDriverStepEnvironment(t *testing.T) {
	testenv.RequireDocker(t)
	m := testMessage(testenv.TestImage,
		runStep("plain", "Plain", lit(strings.Join([]string{
			`echo "actions=$GITHUB_ACTIONS ci=$CI os=$RUNNER_OS temp=$RUNNER_TEMP repo=$GITHUB_REPOSITORY ref=$GITHUB_REF sha=$GITHUB_SHA action=$GITHUB_ACTION"`,
			`echo "token vars: $(env | grep -c -e '^GITHUB_TOKEN=' -e '^ACTIONS_RUNTIME_TOKEN=' -e '^ACTIONS_ID_TOKEN_REQUEST_TOKEN=')"`,
		}, "\n"))),
		runStep("mapped", "Mapped", lit(`[ -n "$GH_TOKEN" ] && echo gh-token-present`), func(s *Step) {
			s.Environment = mapping("GH_TOKEN", exprTok("secrets.GITHUB_TOKEN"))
		}),
		runStep("badenv", "Bad env file", lit(`printf 'X<<EOF\nnever closed\n' >> "$GITHUB_ENV"; echo "NODE_OPTIONS=--inspect" >> "$GITHUB_ENV"`), func(s *Step) {
			s.ContinueOnError = &TemplateToken{Type: TokenBoolean, Bool: true}
		}),
		runStep("check", "Check", exprTok(`format('echo "badenv={0} X=${{X:-unset}}"', steps.badenv.outcome)`)),
	)
	res, _, log := runDriven(t, m, nil, DriverOptions{})
	if res.State != runner.Success {
		t.Fatalf("result = %s (%v)\n%s", res.State, res.Err, log)
	}
	for _, w := range []string{
		"actions=true ci=true os=Linux temp=/tmp/airlock-runner/_temp repo=acme/app ref=refs/heads/main sha=0123456789abcdef0123456789abcdef01234567 action=plain",
		"token vars: 0", "gh-token-present",
		`##[error]GITHUB_ENV: X: heredoc delimiter "EOF" not found`, "badenv=failure X=unset",
	} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
}

// container.env is in every step's environment, under the job's env and
// a step's own, and not in the env context; a secret in it is masked.
func TestDriverContainerEnv(t *testing.T) {
	testenv.RequireDocker(t)
	m := testMessage(testenv.TestImage,
		runStep("plain", "Plain", exprTok(`format('echo "fc=$FROM_CONTAINER shared=$SHARED ctx={0}. key=$KEY fo=$FROM_OPTIONS"', env.FROM_CONTAINER)`)),
		runStep("own", "Own", lit(`echo "own fc=$FROM_CONTAINER"`), func(s *Step) {
			s.Environment = mapping("FROM_CONTAINER", "step")
		}),
	)
	m.JobContainer = mapping("image", testenv.TestImage,
		"env", mapping("FROM_CONTAINER", "container", "SHARED", "container", "KEY", exprTok("secrets.DEPLOY_KEY")),
		"options", "--init -e FROM_OPTIONS=opt")
	m.EnvironmentVariables = []*TemplateToken{mapping("SHARED", "job")}
	res, _, log := runDriven(t, m, nil, DriverOptions{})
	if res.State != runner.Success {
		t.Fatalf("result = %s (%v)\n%s", res.State, res.Err, log)
	}
	for _, w := range []string{"fc=container shared=job ctx=. key=[MASKED] fo=opt", "own fc=step"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	if strings.Contains(log, "deploy-secret-value-42") {
		t.Errorf("the secret from container.env is in the log:\n%s", log)
	}
}
