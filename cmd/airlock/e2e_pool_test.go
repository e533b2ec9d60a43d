package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/runner/config"
)

// `airlock run` with a [pool]: a job of the listed image claims its warm
// sandbox, a job of another image claims a pooled network (a holder's with
// Docker), both succeed, the metrics count both claims, the recent images'
// counts are saved when the agent stops, and nothing of the pool is left
// after SIGTERM; with either executor.
func TestE2EAgentPool(t *testing.T) {
	for _, executor := range []string{"docker", "containerd"} {
		t.Run(executor, func(t *testing.T) { testE2EAgentPool(t, executor) })
	}
}

func testE2EAgentPool(t *testing.T, executor string) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	other := testenv.VariantImage(t, "AIRLOCK_VARIANT=other")
	gl := fakegitlab.New(t)
	token := "glrt-" + e2eSecret("runner")
	gl.AddRunner(token)
	e := newE2E(t, e2eOptions{Executor: executor})
	cmd := e.command(context.Background(), "register", "--url", gl.URL, "--name", "e2e-pool")
	cmd.Env = append(cmd.Env, "AIRLOCK_RUNNER_TOKEN="+token)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("airlock register: %v\n%s", err, out)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cfgText, _ := os.ReadFile(e.config)
	cfgS := regexp.MustCompile(`(?m)^(listen_address|shutdown_timeout|check_interval) = .*$`).ReplaceAllString(string(cfgText), "")
	if err := os.WriteFile(e.config, []byte("listen_address = \""+addr+"\"\nshutdown_timeout = \"1m\"\ncheck_interval = \"200ms\"\n"+cfgS), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(e.config, false)
	if err != nil {
		t.Fatal(err)
	}
	c.Pool.Images, c.Pool.Recent, c.Pool.Networks = []string{testenv.TestImage}, 1, 1
	if err := c.Save(e.config); err != nil {
		t.Fatal(err)
	}
	p := e.start("run")
	metrics := func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for m := metrics(); !strings.Contains(m, `airlock_pool_ready{image="`+testenv.TestImage+`"} 1`) || !strings.Contains(m, `airlock_pool_ready{image="(network)"} 1`); m = metrics() {
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("the pool never got ready; metrics:\n%s\nagent:\n%s%s", m, p.stdout.String(), p.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, img := range []string{testenv.TestImage, other, other} {
		id := gl.Enqueue(fakegitlab.JobSpec{Image: img, Script: []string{`echo "variant=${AIRLOCK_VARIANT:-base}"`},
			Variables: []fakegitlab.Variable{{Key: "GIT_STRATEGY", Value: "none"}}})
		st, err := gl.WaitFinished(ctx, id)
		want := "variant=base"
		if img == other {
			want = "variant=other"
		}
		if err != nil || st.Status != "success" || !strings.Contains(string(gl.Trace(id)), want) {
			t.Fatalf("job of %s: %+v, %v\ntrace:\n%s\nagent:\n%s%s", img, st, err, gl.Trace(id), p.stdout.String(), p.stderr.String())
		}
	}
	m := metrics()
	if want := `airlock_pool_claims_total{image="` + testenv.TestImage + `",result="hit"} 1`; !strings.Contains(m, want) {
		t.Errorf("metrics lack %s:\n%s", want, testenv.GrepLines(m, "airlock_pool"))
	}
	// The first job of the other image claims the pooled network; the
	// second one does too when the pool refilled it in between.
	claims := func(result string) int {
		mm := regexp.MustCompile(`airlock_pool_claims_total\{image="\(network\)",result="` + result + `"\} (\d+)`).FindStringSubmatch(m)
		if mm == nil {
			return 0
		}
		n, _ := strconv.Atoi(mm[1])
		return n
	}
	if hits, misses := claims("hit"), claims("miss"); hits < 1 || hits+misses != 2 {
		t.Errorf("pooled network claims: %d hits, %d misses; want 2 claims, one at least a hit:\n%s", hits, misses, testenv.GrepLines(m, "airlock_pool"))
	}
	p.signal(syscall.SIGTERM)
	if res := p.wait(time.Minute); res.Code != 0 {
		t.Errorf("airlock run after SIGTERM: %s", res)
	}
	// The variant was used twice: counted, and saved at the stop.
	var h struct{ Images []string }
	b, err := os.ReadFile(filepath.Join(e.state, "pool-recent.json"))
	if err == nil {
		err = json.Unmarshal(b, &h)
	}
	if err != nil || strings.Count(strings.Join(h.Images, " "), other) != 2 {
		t.Errorf("recent images saved: %q, %v; want %s twice", b, err, other)
	}
}
