package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
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

func TestE2EAgentCrashRecovery(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	gl := fakegitlab.New(t)
	gl.SetTraceUpdateInterval(1)
	token := "glrt-" + e2eSecret("runner")
	gl.AddRunner(token)
	e := newE2E(t, e2eOptions{})
	cmd := e.command(context.Background(), "register", "--url", gl.URL, "--name", "e2e")
	cmd.Env = append(cmd.Env, "AIRLOCK_RUNNER_TOKEN="+token)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("airlock register: %v\n%s", err, out)
	}
	id := gl.Enqueue(fakegitlab.JobSpec{Image: testenv.TestImage, Script: []string{"echo started", "sleep 300"},
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
		t.Errorf("no container left by the killed agent")
	}
	p2 := e.start("run")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := gl.WaitFinished(ctx, id)
	if err != nil || st.Status != "failed" || st.FailureReason != "runner_system_failure" {
		t.Errorf("crashed job: %+v, %v\nagent:\n%s", st, err, p2.stderr.String())
	}
	t.Logf("trace:\n%s\nartifacts: %d", gl.Trace(id), len(gl.Artifacts(id)))
	p2.signal(syscall.SIGTERM)
	p2.wait(time.Minute)
	t.Logf("agent 2:\n%s", p2.stderr.String())
	if c := e.containers(); len(c) != 0 {
		t.Errorf("containers left after recovery: %v", c)
	}
}
