package docker

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"io/fs"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/executors"
)

// Download reads inside the container: a symlink to /etc/shadow comes back
// as a symlink entry, and a missing path as fs.ErrNotExist.
func TestDownloadKeepsSymlinks(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "dl")
	ctx := context.Background()
	code, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c",
		"mkdir -p /builds/out && echo hi > /builds/out/a && ln -s /etc/shadow /builds/out/x"}, Stdout: io.Discard, Stderr: io.Discard})
	if err != nil || code != 0 {
		t.Fatalf("Exec = %d, %v", code, err)
	}
	rc, err := c.(executors.Downloader).Download(ctx, "/builds/out")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[strings.TrimSuffix(h.Name, "/")] = h
	}
	if h := got["out/x"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/etc/shadow" {
		t.Errorf("out/x = %+v, want a symlink to /etc/shadow", h)
	}
	if h := got["out/a"]; h == nil || h.Typeflag != tar.TypeReg {
		t.Errorf("out/a = %+v, want a regular file", h)
	}
	if _, err := c.(executors.Downloader).Download(ctx, "/builds/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Download(missing) = %v, want fs.ErrNotExist", err)
	}
}

// A service joins the job's network namespace with the job's labels, and
// Destroy removes it.
func TestServiceInJobNamespace(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "svc")
	ctx := context.Background()
	s, err := c.(executors.ServiceStarter).StartService(ctx, executors.ServiceSpec{Name: "echo-0", Image: "airlock-test:busybox",
		Pull: executors.PullNever, Cmd: []string{"sh", "-c", "while true; do echo pong | nc -l -p 7777; done"}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := e.cli.ContainerInspect(ctx, s.ID())
	if err != nil {
		t.Fatal(err)
	}
	if string(info.HostConfig.NetworkMode) != "container:"+c.ID() || info.Config.Labels[executors.LabelRunner] != runner ||
		info.Config.Labels[executors.LabelJob] != "svc" || len(info.HostConfig.CapDrop) != 1 {
		t.Errorf("service network %s labels %v capdrop %v, want the job's namespace, labels and hardening",
			info.HostConfig.NetworkMode, info.Config.Labels, info.HostConfig.CapDrop)
	}
	var out strings.Builder
	code, err := c.Exec(ctx, executors.Exec{Cmd: []string{"/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do probe tcp 127.0.0.1:7777 && exit 0; sleep 0.3; done; exit 1"},
		Stdout: &out, Stderr: &out})
	if err != nil || code != 0 || !strings.Contains(out.String(), "pong") {
		t.Errorf("the job did not reach the service on 127.0.0.1: %d %v %q", code, err, out.String())
	}
	if err := s.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Destroy(ctx); err != nil {
		t.Errorf("second Destroy = %v, want a no-op", err)
	}
}
