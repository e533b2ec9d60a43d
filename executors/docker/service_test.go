package docker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// A service's secret variables reach its process (through the step
// server, over stdin) and never its configuration; its public ones stay
// in the configuration, and the image's command is kept when the service
// gives none.
func TestServiceSecretEnv(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "svc-secret")
	ctx := context.Background()
	const secret = "tok-0f9e8d7c6b5a4"
	s, err := c.(executors.ServiceStarter).StartService(ctx, executors.ServiceSpec{Name: "echo-0", Image: testenv.TestImage,
		Pull: executors.PullNever, Env: []string{"PUBLIC=visible"}, SecretEnv: []string{"TOKEN=" + secret, "PUBLIC=overridden"},
		Cmd: []string{"sh", "-c", `while true; do echo "$TOKEN $PUBLIC $(cat 2>&1 | wc -c)" | nc -l -p 7777; done`}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy(ctx)
	_, raw, err := e.cli.ContainerInspectWithRaw(ctx, s.ID(), false)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(secret)) {
		t.Errorf("docker inspect of the service shows its secret variable:\n%s", raw)
	}
	if !bytes.Contains(raw, []byte("PUBLIC=visible")) {
		t.Errorf("docker inspect of the service lacks its public variable:\n%s", raw)
	}
	var out strings.Builder
	code, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp 127.0.0.1:7777 && exit 0; sleep 0.3; done; exit 1"},
		Stdout: &out, Stderr: &out})
	// The secret variable wins over a public one of the same name; the
	// service's stdin is at EOF (nothing of the variables is left on it).
	if err != nil || code != 0 || !strings.Contains(out.String(), secret+" overridden 0") {
		t.Errorf("the service's answer = %d %v %q, want its secret, the overriding value and an empty stdin", code, err, out.String())
	}
}

// What a service prints — here its secret variable — is kept in memory
// for Logs and never by the engine: no log driver, no file under the
// engine's container directory.
func TestServiceOutputNotOnDisk(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "svc-output")
	ctx := context.Background()
	const secret = "tok-printed-7c6b5a4f3e2d"
	s, err := c.(executors.ServiceStarter).StartService(ctx, executors.ServiceSpec{Name: "talker-0", Image: testenv.TestImage,
		Pull: executors.PullNever, SecretEnv: []string{"TOKEN=" + secret},
		Cmd: []string{"sh", "-c", `echo "starting with $TOKEN"; echo to-stderr >&2; exec sleep 600`}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy(ctx)
	var logs strings.Builder
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(logs.String(), "to-stderr") {
		logs.Reset()
		if err := s.Logs(ctx, &logs, false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "starting with "+secret) || !strings.Contains(logs.String(), "to-stderr") {
		t.Fatalf("Logs = %q, want its stdout and stderr", logs.String())
	}
	info, err := e.cli.ContainerInspect(ctx, s.ID())
	if err != nil {
		t.Fatal(err)
	}
	if info.HostConfig.LogConfig.Type != "none" || info.LogPath != "" {
		t.Errorf("the engine logs the service: driver %q, log path %q", info.HostConfig.LogConfig.Type, info.LogPath)
	}
	sys, err := e.cli.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if dir := filepath.Join(sys.DockerRootDir, "containers", s.ID()); sys.DockerRootDir != "" {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if b, rerr := os.ReadFile(path); rerr == nil && bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s on the host holds what the service printed", path)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Following ends when the service goes.
	done := make(chan error, 1)
	go func() { done <- s.Logs(ctx, io.Discard, true) }()
	if err := s.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("following Logs = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("following Logs did not end with the service")
	}
}

// With the step server off, a service with secret variables is refused
// (naming the setting, not the value) before any container exists.
func TestServiceSecretEnvNeedsStepServer(t *testing.T) {
	testenv.RequireTestImage(t)
	e, err := New(context.Background(), Config{Grace: time.Second, StepServer: "off"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	b := make([]byte, 4)
	rand.Read(b)
	runner := "t" + hex.EncodeToString(b)
	c := create(t, e, runner, "svc-off")
	const secret = "tok-never-shown-0123"
	_, err = c.(executors.ServiceStarter).StartService(context.Background(), executors.ServiceSpec{Name: "db-0", Image: testenv.TestImage,
		Pull: executors.PullNever, SecretEnv: []string{"TOKEN=" + secret}, Cmd: []string{"sleep", "60"}})
	if err == nil || !strings.Contains(err.Error(), "step_server") || strings.Contains(err.Error(), secret) {
		t.Fatalf("StartService = %v, want a refusal naming step_server without the value", err)
	}
	left, err := e.Leftovers(context.Background(), runner)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 { // the job's own container, removed by create's cleanup
		t.Errorf("containers of runner %s: %d, want only the job's", runner, len(left))
	}
}

func TestServiceArgv(t *testing.T) {
	imgEP, imgCmd := []string{"docker-entrypoint.sh"}, []string{"postgres"}
	for _, tc := range []struct {
		name    string
		ep, cmd []string
		want    []string
	}{
		{"image's", nil, nil, []string{"docker-entrypoint.sh", "postgres"}},
		{"command only", nil, []string{"postgres", "-c", "fsync=off"}, []string{"docker-entrypoint.sh", "postgres", "-c", "fsync=off"}},
		{"entrypoint drops the image's command", []string{"/bin/sh"}, nil, []string{"/bin/sh"}},
		{"both", []string{"/bin/sh", "-c"}, []string{"echo hi"}, []string{"/bin/sh", "-c", "echo hi"}},
		{"cleared entrypoint", []string{""}, []string{"redis-server"}, []string{"redis-server"}},
		{"cleared, no command", []string{""}, nil, []string{}},
	} {
		got := executors.ServiceArgv(executors.ServiceSpec{Entrypoint: tc.ep, Cmd: tc.cmd}, imgEP, imgCmd)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: ServiceArgv = %q, want %q", tc.name, got, tc.want)
		}
	}
}
