package main

import (
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/runner/github"
)

// e2eGitHubConfig sets the agent's fast settings and the test image.
func e2eGitHubConfig(t *testing.T, e *e2eEnv) {
	t.Helper()
	b, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	s := regexp.MustCompile(`(?m)^(shutdown_timeout|check_interval|\s*image) = .*$`).ReplaceAllString(string(b), "")
	s = strings.Replace(s, "[docker]\n", "[docker]\nimage = \""+testenv.TestImage+"\"\n", 1)
	if err := os.WriteFile(e.config, []byte("shutdown_timeout = \"1m\"\ncheck_interval = \"200ms\"\n"+s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// jobEnvirons reads the environment of every process in the job's
// containers, from the host.
func jobEnvirons(t *testing.T, e *e2eEnv) string {
	t.Helper()
	var all strings.Builder
	for _, id := range e.containers() {
		out, err := exec.Command("docker", "top", id, "-eo", "pid").Output()
		if err != nil {
			continue
		}
		for i, pid := range strings.Fields(string(out))[1:] {
			b, err := os.ReadFile(filepath.Join("/proc", pid, "environ"))
			if err == nil {
				all.Write(b)
				all.WriteByte('\n')
			}
			if i == 0 {
				jobFiles(filepath.Join("/proc", pid, "root"), &all)
			}
		}
	}
	return all.String()
}

// jobFiles appends the small files a job can read under the usual
// writable places of its container's root (seen from the host).
func jobFiles(root string, all *strings.Builder) {
	for _, dir := range []string{"tmp", "run", "builds", "home", "root", "var/tmp", "github"} {
		_ = filepath.WalkDir(filepath.Join(root, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !d.Type().IsRegular() {
				return nil
			}
			if fi, err := d.Info(); err == nil && fi.Size() < 1<<20 {
				if b, err := os.ReadFile(path); err == nil {
					all.Write(b)
					all.WriteByte('\n')
				}
			}
			return nil
		})
	}
}

func githubCredentials(f *fakegithub.Runners, jobs ...*fakegithub.Job) map[string]string {
	vals := map[string]string{}
	for i, tok := range f.OAuthTokens() {
		vals["runner OAuth token "+string(rune('0'+i))] = tok
	}
	for i, tok := range f.DownloadTokens() {
		vals["action download token "+string(rune('0'+i))] = tok
	}
	for _, j := range jobs {
		vals["job token of "+j.Spec.Name] = j.Token
	}
	return vals
}

func TestE2EGitHubRegisterRunUnregister(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)
	testenv.RequireTestImage(t)
	f := fakegithub.NewRunners(t)
	f.PollHold = 500 * time.Millisecond
	e := newE2E(t, e2eOptions{})

	// register: the token from the environment, never on the command line.
	cmd := e.command(context.Background(), "register", "github", "--url", f.GitHubURL(), "--name", "gh-e2e", "--labels", "airlock")
	cmd.Env = append(cmd.Env, "AIRLOCK_GITHUB_TOKEN="+f.RegistrationToken())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("airlock register github: %v\n%s", err, out)
	}
	e.keep(string(out))
	runners := f.Runners()
	if len(runners) != 1 || runners[0].Name != "gh-e2e" {
		t.Fatalf("fake runners after register: %+v", runners)
	}
	clientID := runners[0].ClientID
	cfgText, _ := os.ReadFile(e.config)
	if !strings.Contains(string(cfgText), "[[github]]") || strings.Contains(string(cfgText), clientID) {
		t.Fatalf("config after register (want a [[github]] entry without the client id):\n%s", cfgText)
	}
	db, _ := os.ReadFile(filepath.Join(e.state, "state.db"))
	if strings.Contains(string(db), clientID) {
		t.Error("the client id is stored in plaintext in state.db")
	}
	e.mustRun("", "verify")
	e2eGitHubConfig(t, e)

	fj := f.QueueJob(fakegithub.JobSpec{Name: "build", Labels: []string{"self-hosted", "airlock"}, Container: testenv.TestImage,
		Secrets: map[string]string{"DEPLOY_KEY": "dk-" + e2eSecret("deploy")},
		Steps: []fakegithub.Step{
			{Name: "Hello", Run: "echo hello from ${{ github.repository }}\necho '### built' >> \"$GITHUB_STEP_SUMMARY\"\necho '::warning title=Heads up::careful'"},
			{Name: "Secret", Run: "echo key=${{ secrets.DEPLOY_KEY }}"},
			{Name: "Wait", Run: "sleep 3"},
			{Name: "Only on failure", Run: "echo never", If: "failure()"},
		}})
	p := e.start("run")
	// While the job runs, no process of it holds a runner or job credential.
	var environs string
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && f.Job(fj.ID).State != "completed" && !p.exited() {
		if env := jobEnvirons(t, e); env != "" {
			environs += env
		}
		time.Sleep(300 * time.Millisecond)
	}
	got, ok := f.WaitJob(fj.ID, "completed", time.Minute)
	if !ok || got.Conclusion != "succeeded" {
		if !p.exited() {
			p.signal(syscall.SIGTERM)
		}
		res := p.wait(time.Minute)
		t.Fatalf("job: state %s conclusion %s\njob log:\n%s\nagent:\n%s", got.State, got.Conclusion, got.JobLog, res.Output())
	}
	if !strings.Contains(environs, "GITHUB_ACTIONS=true") {
		t.Error("never saw a process of the job to inspect")
	}
	creds0 := githubCredentials(f, fj)
	creds0["runner client id"] = clientID
	for what, v := range creds0 {
		if strings.Contains(environs, v) {
			t.Errorf("the %s is in the environment or a file of a job process", what)
		}
	}
	logs := map[string]string{}
	for _, s := range fj.Spec.Steps {
		logs[s.Name] = got.StepLogs[s.ID]
	}
	if !strings.Contains(logs["Hello"], "hello from acme/app") {
		t.Errorf("Hello step log = %q", logs["Hello"])
	}
	if strings.Contains(got.JobLog, fj.Spec.Secrets["DEPLOY_KEY"]) || !strings.Contains(logs["Secret"], "key=[MASKED]") {
		t.Errorf("the GitHub secret is not masked: step log %q", logs["Secret"])
	}
	results := results(got)
	if results["Hello"] != "succeeded" || results["Only on failure"] != "skipped" {
		t.Errorf("step results %v", results)
	}
	var live strings.Builder
	for _, fl := range got.FeedLines {
		live.WriteString(fl.Text + "\n")
	}
	if !strings.Contains(live.String(), "hello from acme/app") || strings.Contains(live.String(), fj.Spec.Secrets["DEPLOY_KEY"]) {
		t.Errorf("live console lines (want the output, masked):\n%s", live.String())
	}
	// Step states went live in order: Hello completed while Secret ran.
	liveOrder := false
	for _, ups := range got.StepUpdates[:max(len(got.StepUpdates)-1, 0)] {
		if len(ups) > 1 && ups[0].Status == 6 && ups[0].Conclusion == 2 && ups[1].Status == 3 {
			liveOrder = true
		}
	}
	if !liveOrder {
		t.Errorf("no live update showed Hello completed while Secret ran: %+v", got.StepUpdates)
	}
	if sum := got.Summaries[fj.Spec.Steps[0].ID]; !strings.Contains(sum, "### built") {
		t.Errorf("step summary of Hello = %q", sum)
	}
	if anns, _ := got.Completion["annotations"].([]any); len(anns) != 1 || anns[0].(map[string]any)["level"] != "WARNING" || anns[0].(map[string]any)["title"] != "Heads up" {
		t.Errorf("completejob annotations = %v, want the step's warning", got.Completion["annotations"])
	}
	if !strings.Contains(got.Diag, "job_finished") && !strings.Contains(got.Diag, "\"seq\"") {
		t.Errorf("the audit trail was not uploaded with the job (diag log %d bytes)", len(got.Diag))
	}
	p.signal(syscall.SIGTERM)
	res := p.wait(time.Minute)
	if res.Code != 0 {
		t.Errorf("agent exit %s", res)
	}
	if f.Sessions() != 0 {
		t.Error("the agent left its GitHub session open")
	}
	for _, v := range f.Violations() {
		t.Errorf("protocol violation: %s", v)
	}
	recv := f.Received()
	for what, v := range githubCredentials(f, fj) {
		if strings.Contains(recv, v) {
			t.Errorf("the %s reached the fake in a request body or log", what)
		}
	}

	// unregister: removes the runner on GitHub, its sealed key and entry.
	if r := e.run("", "unregister", "github", "--name", "gh-e2e"); r.Code != 2 {
		t.Errorf("unregister without a remove token: %s, want exit 2", r)
	}
	cmd = e.command(context.Background(), "unregister", "github", "--name", "gh-e2e")
	cmd.Env = append(cmd.Env, "AIRLOCK_GITHUB_TOKEN="+f.RemoveToken())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("airlock unregister github: %v\n%s", err, out)
	}
	if len(f.Runners()) != 0 {
		t.Error("the runner is still registered on GitHub")
	}
	cfgText, _ = os.ReadFile(e.config)
	if strings.Contains(string(cfgText), "[[github]]") {
		t.Errorf("config still has the entry:\n%s", cfgText)
	}
	creds := githubCredentials(f, fj)
	creds["GitHub secret"] = fj.Spec.Secrets["DEPLOY_KEY"]
	var vals []string
	for _, v := range creds {
		vals = append(vals, v)
	}
	e.assertNoLeak(vals, map[string]string{"job log": got.JobLog, "step logs": strings.Join(mapValues(got.StepLogs), "\n")})
}

// results maps step names to their completejob conclusions.
func results(j fakegithub.Job) map[string]string {
	out := map[string]string{}
	rs, _ := j.Completion["stepResults"].([]any)
	for _, r := range rs {
		m := r.(map[string]any)
		out[m["name"].(string)], _ = m["conclusion"].(string)
	}
	return out
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestE2EGitHubJITOneJobAndCancellation(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)
	testenv.RequireTestImage(t)
	f := fakegithub.NewRunners(t)
	f.PollHold = 500 * time.Millisecond
	e := newE2E(t, e2eOptions{})
	e2eGitHubConfig(t, e)
	enc, _ := f.JITConfig("jit-e2e", "airlock")

	first := f.QueueJob(fakegithub.JobSpec{Name: "long", Labels: []string{"airlock"}, Container: testenv.TestImage,
		Steps: []fakegithub.Step{
			{Name: "Sleep", Run: "echo sleeping; sleep 600"},
			{Name: "Cleanup", Run: "echo cleaning up", If: "always()"},
			{Name: "After", Run: "echo not after a cancel"},
		}})
	second := f.QueueJob(fakegithub.JobSpec{Name: "second", Labels: []string{"airlock"}, Container: testenv.TestImage,
		Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})

	// The JIT config comes on stdin: nothing of it on the command line.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "run", "--github-jitconfig-file", "-")
	cmd.Stdin = strings.NewReader(enc)
	var outBuf e2eBuffer
	cmd.Stdout, cmd.Stderr = &outBuf, &outBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	// Cancel once the sleep runs.
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && !strings.Contains(outBuf.String()+jobEnvirons(t, e), "sleep") {
		if j := f.Job(first.ID); len(j.StepUpdates) > 0 && j.StepUpdates[len(j.StepUpdates)-1][0].Status == 3 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second)
	environs := jobEnvirons(t, e)
	f.Cancel(first.ID)
	got, ok := f.WaitJob(first.ID, "completed", 2*time.Minute)
	if !ok {
		t.Fatalf("job not completed after cancel; agent:\n%s", outBuf.String())
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("airlock run --github-jitconfig-file: %v\n%s", err, outBuf.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("the JIT run did not exit after its job:\n%s", outBuf.String())
	}
	e.keep(outBuf.String())
	t.Logf("cancelled job: %v; logs %v", results(got), got.StepLogs)
	if got.Conclusion != "canceled" {
		t.Errorf("conclusion %q, want canceled", got.Conclusion)
	}
	results := results(got)
	if results["Sleep"] != "canceled" || results["Cleanup"] != "succeeded" || results["After"] != "skipped" {
		t.Errorf("step results %v, want Sleep canceled, Cleanup succeeded, After skipped", results)
	}
	if log := got.StepLogs[first.Spec.Steps[1].ID]; !strings.Contains(log, "cleaning up") {
		t.Errorf("Cleanup step log = %q", log)
	}
	if s := f.Job(second.ID); s.Acquisitions != 0 {
		t.Errorf("the JIT runner took a second job (state %s)", s.State)
	}
	if strings.Contains(outBuf.String(), enc[:40]) {
		t.Error("the JIT config appears in the agent's output")
	}
	reg, err := github.ParseJITConfig(enc)
	if err != nil {
		t.Fatal(err)
	}
	secretsOf := map[string]string{"JIT config": enc[:64], "runner private key": base64.StdEncoding.EncodeToString(reg.Key.D.Bytes())[:64],
		"job token": first.Token}
	for i, tok := range f.OAuthTokens() {
		secretsOf["OAuth token "+string(rune('0'+i))] = tok
	}
	if !strings.Contains(environs, "GITHUB_ACTIONS=true") {
		t.Error("never saw a process of the job to inspect")
	}
	var vals []string
	for what, v := range secretsOf {
		vals = append(vals, v)
		if strings.Contains(environs, v) {
			t.Errorf("the %s is in the environment or a file of a job process", what)
		}
		if strings.Contains(f.Received(), v) {
			t.Errorf("the %s reached the fake in a request body or log", what)
		}
	}
	e.assertNoLeak(vals, map[string]string{"job log": got.JobLog})
}

func TestE2EGitHubAgentKilledMidJob(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)
	testenv.RequireTestImage(t)
	f := fakegithub.NewRunners(t)
	f.PollHold = 500 * time.Millisecond
	e := newE2E(t, e2eOptions{})
	cmd := e.command(context.Background(), "register", "github", "--url", f.GitHubURL(), "--name", "gh-crash")
	cmd.Env = append(cmd.Env, "AIRLOCK_GITHUB_TOKEN="+f.RegistrationToken())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	e2eGitHubConfig(t, e)
	fv := fakevault.New(t)
	e.mustRun(fv.RootToken, "secret", "set", "vault-ci", "--backend", "vault", "--vault-addr", fv.URL, "--vault-mode", "token")
	e.mustRun("", "grant", "add", "vault-ci", "--repo", "acme/app", "--source", "github", "--deliver", "env", "--var", "VAULT_TOKEN", "--scope", "policies=ci")
	fj := f.QueueJob(fakegithub.JobSpec{Name: "crash", Labels: []string{"airlock"}, Container: testenv.TestImage,
		Env:   map[string]string{"AIRLOCK_SECRETS": "vault-ci:VAULT_TOKEN"},
		Steps: []fakegithub.Step{{Name: "Sleep", Run: "echo started; sleep 600"}}})
	p := e.start("run")
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && len(e.containers()) == 0 {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	if f.Job(fj.ID).State != "acquired" {
		t.Fatalf("job state %s before the kill; agent:\n%s%s", f.Job(fj.ID).State, p.stdout.String(), p.stderr.String())
	}
	if n := len(fv.ChildTokens()); n != 1 || len(fv.LiveChildTokens()) != 1 {
		t.Fatalf("%d Vault tokens minted, %d live before the kill: want the job's one, live", n, len(fv.LiveChildTokens()))
	}
	p.signal(syscall.SIGKILL)
	p.wait(time.Minute)
	if len(fv.LiveChildTokens()) != 1 {
		t.Fatal("the token was revoked although the agent was SIGKILLed: the test proves nothing")
	}

	// The restarted agent cleans up and reports the job failed.
	f.DropSessions() // GitHub times a dead runner's session out
	p2 := e.start("run")
	got, ok := f.WaitJob(fj.ID, "completed", 2*time.Minute)
	p2.signal(syscall.SIGTERM)
	res := p2.wait(time.Minute)
	if !ok || got.Conclusion != "failed" {
		t.Fatalf("crashed job: state %s conclusion %q\nagent:\n%s", got.State, got.Conclusion, res.Output())
	}
	t.Logf("crashed job reported %s; trail %d bytes; job log:\n%s", got.Conclusion, len(got.Diag), got.JobLog)
	if !strings.Contains(got.Diag, "runner_crashed") {
		t.Errorf("the uploaded trail lacks the runner_crashed record (diag %d bytes)", len(got.Diag))
	}
	if len(e.containers()) != 0 {
		t.Error("the crashed job's container is left")
	}
	if live := fv.LiveChildTokens(); len(live) != 0 {
		t.Errorf("%d Vault tokens of the crashed job still live after the restart", len(live))
	}
	if !strings.Contains(got.Diag, "credential_revoked") {
		t.Errorf("the uploaded trail does not record the revocation")
	}
}

func TestE2EGitHubDeletedRegistrationStopsCleanly(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)
	f := fakegithub.NewRunners(t)
	f.PollHold = 300 * time.Millisecond
	e := newE2E(t, e2eOptions{})
	cmd := e.command(context.Background(), "register", "github", "--url", f.GitHubURL(), "--name", "gh-gone")
	cmd.Env = append(cmd.Env, "AIRLOCK_GITHUB_TOKEN="+f.RegistrationToken())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	e2eGitHubConfig(t, e)
	id := f.Runners()[0].ID
	p := e.start("run")
	if !p.waitOutput("listening for GitHub jobs", time.Minute) {
		t.Fatalf("agent never listened:\n%s%s", p.stdout.String(), p.stderr.String())
	}
	f.DeleteRunner(id)
	if !p.waitOutput("registration is gone", time.Minute) {
		t.Fatalf("the agent did not say the registration is gone:\n%s%s", p.stdout.String(), p.stderr.String())
	}
	// It stops asking: no OAuth exchange or poll loop after that.
	time.Sleep(time.Second)
	before := strings.Count(f.Received(), "\n")
	time.Sleep(2 * time.Second)
	if after := strings.Count(f.Received(), "\n"); after != before {
		t.Errorf("%d more requests after the registration was known gone, want none", after-before)
	}
	p.signal(syscall.SIGTERM)
	if res := p.wait(time.Minute); res.Code != 0 {
		t.Errorf("agent exit: %s", res)
	}
	if r := e.run("", "verify"); r.Code != 1 || !strings.Contains(r.Output(), "deleted on GitHub") {
		t.Errorf("verify of a deleted registration: %s, want exit 1 saying it was deleted", r)
	}
}

func TestE2EGitHubStoredJITConfig(t *testing.T) {
	f := fakegithub.NewRunners(t)
	e := newE2E(t, e2eOptions{})
	enc, id := f.JITConfig("jit-stored", "airlock")
	res := e.mustRun(enc, "register", "github", "--name", "jit-stored", "--jitconfig-file", "-")
	if !strings.Contains(res.Stdout, "jit-stored") {
		t.Errorf("register output: %s", res)
	}
	cfgText, _ := os.ReadFile(e.config)
	if !strings.Contains(string(cfgText), "ephemeral = true") || strings.Contains(string(cfgText), enc[:32]) {
		t.Errorf("config after storing a JIT config:\n%s", cfgText)
	}
	db, _ := os.ReadFile(filepath.Join(e.state, "state.db"))
	if strings.Contains(string(db), enc[:32]) || strings.Contains(string(db), "jit-stored\",\"server") {
		t.Error("the JIT registration is stored in plaintext")
	}
	e.mustRun("", "verify")
	// An ephemeral entry is removed locally without a remove token.
	e.mustRun("", "unregister", "github", "--name", "jit-stored")
	if _, ok := f.Runner(id); !ok {
		t.Fatal("fake lost the runner")
	}
	cfgText, _ = os.ReadFile(e.config)
	if strings.Contains(string(cfgText), "[[github]]") {
		t.Errorf("entry left after unregister:\n%s", cfgText)
	}
	e.assertNoLeak([]string{enc[:64]}, nil)
}

// A JIT runner's job interrupted by a crash is reported by the next
// `airlock run`, even though that serves another JIT runner.
func TestE2EGitHubJITCrashReportedByNextRunner(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)
	testenv.RequireTestImage(t)
	f := fakegithub.NewRunners(t)
	f.PollHold = 500 * time.Millisecond
	e := newE2E(t, e2eOptions{})
	e2eGitHubConfig(t, e)
	enc1, _ := f.JITConfig("jit-crash-1", "airlock")
	fj := f.QueueJob(fakegithub.JobSpec{Name: "crash", Labels: []string{"airlock"}, Container: testenv.TestImage,
		Steps: []fakegithub.Step{{Name: "Sleep", Run: "echo started; sleep 600"}}})
	start := func(enc string) (*exec.Cmd, *e2eBuffer, chan error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		t.Cleanup(cancel)
		cmd := e.command(ctx, "run", "--github-jitconfig-file", "-")
		cmd.Stdin = strings.NewReader(enc)
		out := &e2eBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		return cmd, out, done
	}
	cmd1, out1, done1 := start(enc1)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && !strings.Contains(jobEnvirons(t, e), "GITHUB_ACTIONS=true") {
		time.Sleep(200 * time.Millisecond)
	}
	_ = cmd1.Process.Kill()
	<-done1
	if f.Job(fj.ID).State != "acquired" {
		t.Fatalf("job state %s at the kill; agent:\n%s", f.Job(fj.ID).State, out1.String())
	}
	f.DropSessions()

	enc2, _ := f.JITConfig("jit-crash-2", "airlock")
	cmd2, out2, done2 := start(enc2)
	got, ok := f.WaitJob(fj.ID, "completed", 2*time.Minute)
	if !ok || got.Conclusion != "failed" || !strings.Contains(got.Diag, "runner_crashed") {
		_ = cmd2.Process.Kill()
		<-done2
		t.Fatalf("crashed JIT job: state %s conclusion %q trail %d bytes\nagent:\n%s", got.State, got.Conclusion, len(got.Diag), out2.String())
	}
	// The second runner still takes its own job, then exits.
	own := f.QueueJob(fakegithub.JobSpec{Name: "own", Labels: []string{"airlock"}, Container: testenv.TestImage,
		Steps: []fakegithub.Step{{Name: "A", Run: "true"}}})
	if j, ok := f.WaitJob(own.ID, "completed", 2*time.Minute); !ok || j.Conclusion != "succeeded" {
		t.Errorf("second JIT runner's own job: %s %q\n%s", j.State, j.Conclusion, out2.String())
	}
	select {
	case <-done2:
	case <-time.After(time.Minute):
		_ = cmd2.Process.Kill()
		t.Fatal("the second JIT run did not exit after its job")
	}
	e.keep(out1.String(), out2.String())
}

// One agent serves a GitLab runner and a GitHub runner at once.
func TestE2EOneAgentServesGitLabAndGitHub(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireDocker(t)
	testenv.RequireTestImage(t)
	gl := fakegitlab.New(t)
	gl.SetTraceUpdateInterval(1)
	token := "glrt-" + e2eSecret("runner")
	gl.AddRunner(token)
	f := fakegithub.NewRunners(t)
	f.PollHold = 500 * time.Millisecond
	e := newE2E(t, e2eOptions{})
	cmd := e.command(context.Background(), "register", "--url", gl.URL, "--name", "gl")
	cmd.Env = append(cmd.Env, "AIRLOCK_RUNNER_TOKEN="+token)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	cmd = e.command(context.Background(), "register", "github", "--url", f.GitHubURL(), "--name", "gh")
	cmd.Env = append(cmd.Env, "AIRLOCK_GITHUB_TOKEN="+f.RegistrationToken())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("register github: %v\n%s", err, out)
	}
	e2eGitHubConfig(t, e)
	b, _ := os.ReadFile(e.config)
	if err := os.WriteFile(e.config, append([]byte("concurrent = 2\n"), regexp.MustCompile(`(?m)^concurrent = .*$`).ReplaceAll(b, nil)...), 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustRun("", "verify")
	glID := gl.Enqueue(fakegitlab.JobSpec{Image: testenv.TestImage, Script: []string{"echo hi from gitlab"},
		Variables: []fakegitlab.Variable{{Key: "GIT_STRATEGY", Value: "none"}}})
	gh := f.QueueJob(fakegithub.JobSpec{Name: "gh", Labels: []string{"airlock"}, Container: testenv.TestImage,
		Steps: []fakegithub.Step{{Name: "Hi", Run: "echo hi from github"},
			// A docker:// step: a container of its image beside the job's.
			{Name: "In its image", Uses: "docker://" + testenv.TestImage,
				With: map[string]string{"entrypoint": "/bin/sh", "args": `-c 'echo "hi from $INPUT_WHERE in $(pwd)"'`, "where": "a sibling"}}}})
	p := e.start("run")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := gl.WaitFinished(ctx, glID)
	got, ok := f.WaitJob(gh.ID, "completed", 2*time.Minute)
	p.signal(syscall.SIGTERM)
	res := p.wait(time.Minute)
	if err != nil || st.Status != "success" {
		t.Errorf("GitLab job: %+v, %v\n%s", st, err, res.Output())
	}
	if !ok || got.Conclusion != "succeeded" || !strings.Contains(got.StepLogs[gh.Spec.Steps[0].ID], "hi from github") {
		t.Errorf("GitHub job: %s %q\n%s", got.State, got.Conclusion, res.Output())
	}
	if l := got.StepLogs[gh.Spec.Steps[1].ID]; !strings.Contains(l, "hi from a sibling in /github/workspace") {
		t.Errorf("docker:// step log = %q", l)
	}
}
