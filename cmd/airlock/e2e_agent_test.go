package main

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
)

func TestE2EAgentRegisterRun(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	gl := fakegitlab.New(t)
	gl.SetTraceUpdateInterval(1)
	token := "glrt-" + e2eSecret("runner")
	gl.AddRunner(token)
	e := newE2E(t, e2eOptions{})

	// register: token from the environment, never on the command line.
	cmd := e.command(context.Background(), "register", "--url", gl.URL, "--name", "e2e", "--limit", "2")
	cmd.Env = append(cmd.Env, "AIRLOCK_RUNNER_TOKEN="+token)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("airlock register: %v\n%s", err, out)
	}
	fi, err := os.Stat(e.config)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("config after register: %v, mode %v; want 0600", err, fi.Mode())
	}
	b, _ := os.ReadFile(e.config)
	if !strings.Contains(string(b), "[[runners]]") || !strings.Contains(string(b), token) {
		t.Errorf("config lacks the runner:\n%s", b)
	}
	if m := gl.Managers(token); len(m) != 1 {
		t.Errorf("GitLab knows managers %v, want this machine's system id", m)
	}
	if res := e.run("", "register", "--url", gl.URL, "--name", "e2e", "--token", token); res.Code != 2 {
		t.Errorf("second register with the same name: %s, want exit 2", res)
	}
	e.mustRun("", "verify")

	// run: pick a free port for the metrics.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cfgText, _ := os.ReadFile(e.config)
	cfgS := regexp.MustCompile(`(?m)^(listen_address|shutdown_timeout|check_interval) = .*$`).ReplaceAllString(string(cfgText), "")
	os.WriteFile(e.config, []byte("listen_address = \""+addr+"\"\nshutdown_timeout = \"1m\"\ncheck_interval = \"200ms\"\n"+cfgS), 0o600)
	id := gl.Enqueue(fakegitlab.JobSpec{Image: testenv.TestImage, Script: []string{"echo hi from the agent"},
		Variables: []fakegitlab.Variable{{Key: "GIT_STRATEGY", Value: "none"}}})
	p := e.start("run")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	go func() {
		for !p.exited() {
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
	}()
	defer cancel()
	st, err := gl.WaitFinished(ctx, id)
	if err != nil || st.Status != "success" {
		t.Fatalf("job: %+v, %v\ntrace:\n%s\nagent:\n%s%s", st, err, gl.Trace(id), p.stdout.String(), p.stderr.String())
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(mb), `airlock_jobs_total{failure_reason="",state="success"} 1`) {
		t.Errorf("metrics:\n%s", mb)
	}
	p.signal(syscall.SIGTERM)
	if res := p.wait(time.Minute); res.Code != 0 {
		t.Errorf("airlock run after SIGTERM: %s", res)
	}
	t.Logf("trace:\n%s", gl.Trace(id))
	arts := gl.Artifacts(id)
	if len(arts) != 1 || arts[0].Name != "airlock-audit.zip" {
		t.Errorf("artifacts: %+v", arts)
	} else {
		t.Logf("audit artifact: %d bytes", len(arts[0].Data))
	}
	t.Logf("agent log:\n%s", p.stderr.String())

	e.mustRun("", "unregister", "--all")
	if m := gl.Managers(token); len(m) != 0 {
		t.Errorf("managers after unregister: %v", m)
	}
	b, _ = os.ReadFile(e.config)
	if strings.Contains(string(b), token) {
		t.Errorf("config still holds the token after unregister")
	}
}

// A SIGKILLed agent's job is, on the next start: reported failed
// (runner_system_failure), its Vault token revoked, its container removed,
// and its audit trail sealed with runner_crashed, verified and uploaded.
func TestE2EAgentCrashRecovery(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	gl := fakegitlab.New(t)
	gl.SetTraceUpdateInterval(1)
	fv := fakevault.New(t)
	token := "glrt-" + e2eSecret("runner")
	gl.AddRunner(token)
	e := newE2E(t, e2eOptions{})
	cmd := e.command(context.Background(), "register", "--url", gl.URL, "--name", "e2e")
	cmd.Env = append(cmd.Env, "AIRLOCK_RUNNER_TOKEN="+token)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("airlock register: %v\n%s", err, out)
	}
	e.mustRun(fv.RootToken, "secret", "set", "vault-ci", "--backend", "vault", "--vault-addr", fv.URL, "--vault-mode", "token")
	e.mustRun("", "grant", "add", "vault-ci", "--repo", "group/app", "--source", "gitlab", "--deliver", "env", "--var", "VAULT_TOKEN", "--scope", "policies=ci")
	id := gl.Enqueue(fakegitlab.JobSpec{Project: "group/app", Image: testenv.TestImage, Script: []string{"echo started", "sleep 300"},
		Secrets:   "vault-ci",
		Variables: []fakegitlab.Variable{{Key: "GIT_STRATEGY", Value: "none"}}})
	p := e.start("run")
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(string(gl.Trace(id)), "started") {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("job never started; agent:\n%s", p.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.signal(syscall.SIGKILL)
	p.wait(time.Minute)
	if len(e.containers()) == 0 {
		t.Errorf("no container left by the killed agent: the test of recovery proves nothing")
	}
	if live := fv.LiveChildTokens(); len(live) != 1 {
		t.Fatalf("%d live Vault child tokens after the kill, want the job's one: the test proves nothing", len(live))
	}
	p2 := e.start("run")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := gl.WaitFinished(ctx, id)
	if err != nil || st.Status != "failed" || st.FailureReason != "runner_system_failure" {
		t.Errorf("crashed job: %+v, %v\nagent:\n%s", st, err, p2.stderr.String())
	}
	if live := fv.LiveChildTokens(); len(live) != 0 {
		t.Errorf("%d Vault child tokens still live after recovery: %s", len(live), e2eJSON(live))
	}
	arts := gl.Artifacts(id)
	if len(arts) != 1 {
		t.Fatalf("artifacts of the crashed job = %d, want the audit trail", len(arts))
	}
	zr, err := zip.NewReader(bytes.NewReader(arts[0].Data), int64(len(arts[0].Data)))
	if err != nil || len(zr.File) != 1 {
		t.Fatalf("audit artifact is not a zip with one trail: %v", err)
	}
	rc, err := zr.File[0].Open()
	if err != nil {
		t.Fatal(err)
	}
	trail, _ := io.ReadAll(rc)
	rc.Close()
	path := filepath.Join(t.TempDir(), "trail.jsonl")
	os.WriteFile(path, trail, 0o600)
	if res := e.run("", "audit", "verify", path); res.Code != 0 {
		t.Errorf("audit verify of the uploaded trail: %s", res)
	}
	if !bytes.Contains(trail, []byte(`"type":"runner_crashed"`)) || !bytes.Contains(trail, []byte(`"type":"credential_revoked"`)) {
		t.Errorf("uploaded trail lacks runner_crashed or credential_revoked:\n%s", trail)
	}
	p2.signal(syscall.SIGTERM)
	p2.wait(time.Minute)
	if c := e.containers(); len(c) != 0 {
		t.Errorf("containers left after recovery: %v", c)
	}
}
