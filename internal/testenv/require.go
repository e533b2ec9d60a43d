// Package testenv holds test helpers: capability probes that really probe,
// the fake internet namespace and fake coordinators.
//
// A probe that fails skips the test, unless AIRLOCK_TEST_REQUIRE names the
// capability (CI sets AIRLOCK_TEST_REQUIRE=docker,root): then it fails the
// test, so that a green CI always means the real thing ran.
package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Required reports whether AIRLOCK_TEST_REQUIRE names capability c.
func Required(c string) bool {
	for _, f := range strings.Split(os.Getenv("AIRLOCK_TEST_REQUIRE"), ",") {
		if strings.TrimSpace(f) == c {
			return true
		}
	}
	return false
}

func missing(t testing.TB, c, why string) {
	t.Helper()
	if Required(c) {
		t.Fatalf("required capability %q is missing (AIRLOCK_TEST_REQUIRE): %s", c, why)
	}
	t.Skipf("skipping: %s (set AIRLOCK_TEST_REQUIRE=%s to fail instead)", why, c)
}

// RequireRoot skips (or fails) unless the test runs as root with the
// privileges to create network namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "root", "test needs root")
		return
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		missing(t, "root", "no network namespaces: "+err.Error())
	}
}

var docker struct {
	once sync.Once
	err  error
}

// DockerSocket is the Docker engine's socket the tests use.
func DockerSocket() string {
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		return strings.TrimPrefix(h, "unix://")
	}
	return "/var/run/docker.sock"
}

// RequireDocker skips (or fails) unless a Docker engine answers a ping.
func RequireDocker(t testing.TB) {
	t.Helper()
	docker.once.Do(func() { docker.err = pingDocker(DockerSocket()) })
	if docker.err != nil {
		missing(t, "docker", "Docker engine does not answer: "+docker.err.Error())
	}
}

func pingDocker(sock string) error {
	resp, err := dockerHTTP(sock).Get("http://docker/_ping")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &net.AddrError{Err: "ping answered " + resp.Status, Addr: sock}
	}
	return nil
}

// TestImage is the locally built image the tests run jobs in (make testimage).
const TestImage = "airlock-test:busybox"

// RequireTestImage requires Docker and the test image, and returns the
// image's name. A missing image fails the test when Docker is required:
// `make test` builds it first.
func RequireTestImage(t testing.TB) string {
	t.Helper()
	RequireDocker(t)
	c := dockerHTTP(DockerSocket())
	resp, err := c.Get("http://docker/images/" + TestImage + "/json")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return TestImage
		}
		err = &net.AddrError{Err: "image inspect answered " + resp.Status, Addr: TestImage}
	}
	missing(t, "docker", "test image "+TestImage+" is missing (run `make testimage`): "+err.Error())
	return TestImage
}

func dockerHTTP(sock string) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

// EtcdBin is the etcd server binary the fleet tests run: $ETCD_BIN, else
// etcd on PATH (Debian's etcd-server package).
func EtcdBin() string {
	if b := os.Getenv("ETCD_BIN"); b != "" {
		return b
	}
	return "etcd"
}

var etcdProbe struct {
	once sync.Once
	err  error
}

// RequireEtcd skips (or, with "etcd" in AIRLOCK_TEST_REQUIRE, fails)
// unless an etcd server binary is there and runs (`etcd --version`).
func RequireEtcd(t testing.TB) string {
	t.Helper()
	etcdProbe.once.Do(func() {
		bin, err := exec.LookPath(EtcdBin())
		if err == nil {
			err = exec.Command(bin, "--version").Run()
		}
		etcdProbe.err = err
	})
	if etcdProbe.err != nil {
		missing(t, "etcd", "no etcd server to run (apt-get install etcd-server, or set ETCD_BIN): "+etcdProbe.err.Error())
	}
	return EtcdBin()
}

// ContainerdSocket is the containerd socket the tests use: AIRLOCK_CONTAINERD
// if set, else the standard socket if it exists, else the daemon under
// Docker.
func ContainerdSocket() string {
	if s := os.Getenv("AIRLOCK_CONTAINERD"); s != "" {
		return s
	}
	if _, err := os.Stat("/run/containerd/containerd.sock"); err == nil {
		return "/run/containerd/containerd.sock"
	}
	return "/var/run/docker/containerd/containerd.sock"
}

var containerdProbe struct {
	once sync.Once
	err  error
}

// RequireContainerd skips (or fails, with AIRLOCK_TEST_REQUIRE naming
// "containerd") unless root can talk to containerd at ContainerdSocket:
// the socket accepts a connection and answers a gRPC health check.
func RequireContainerd(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "containerd", "containerd tests need root")
		return
	}
	containerdProbe.once.Do(func() { containerdProbe.err = probeContainerd(ContainerdSocket()) })
	if containerdProbe.err != nil {
		missing(t, "containerd", "containerd does not answer at "+ContainerdSocket()+": "+containerdProbe.err.Error())
	}
}

// variantCounter makes VariantImage's names unique in a test process.
var variantCounter atomic.Int64

// VariantImage returns the name of a Docker image made for the test from
// TestImage that differs from it only by the environment variable env
// ("KEY=value"), so it has another image ID; the name and the image are
// removed at cleanup.
func VariantImage(t testing.TB, env string) string {
	t.Helper()
	return VariantImageWith(t, "ENV "+env)
}

// VariantImageWith is VariantImage with the Dockerfile instructions
// changes (ENV, HEALTHCHECK, EXPOSE, CMD…) applied instead.
func VariantImageWith(t testing.TB, changes ...string) string {
	t.Helper()
	return VariantImageFiles(t, nil, changes...)
}

// VariantImageFiles is VariantImageWith with files (absolute path →
// content, made executable) added to the image too.
func VariantImageFiles(t testing.TB, files map[string]string, changes ...string) string {
	t.Helper()
	RequireTestImage(t)
	name := fmt.Sprintf("airlock-test:variant-%d-%d", os.Getpid(), variantCounter.Add(1))
	out, err := exec.Command("docker", "create", "--pull", "never", TestImage, "true").CombinedOutput()
	if err != nil {
		t.Fatalf("docker create: %v: %s", err, out)
	}
	id := strings.TrimSpace(string(out))
	defer exec.Command("docker", "rm", id).Run()
	if len(files) > 0 {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for p, content := range files {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: 0o755, Size: int64(len(content))})
			io.WriteString(tw, content)
		}
		tw.Close()
		cp := exec.Command("docker", "cp", "-", id+":/")
		cp.Stdin = &buf
		if out, err := cp.CombinedOutput(); err != nil {
			t.Fatalf("docker cp: %v: %s", err, out)
		}
	}
	args := []string{"commit"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	out, err = exec.Command("docker", append(args, id, name)...).Output()
	if err != nil {
		t.Fatalf("docker commit: %v", err)
	}
	imageID := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		// The name may have been moved to another image meanwhile.
		_ = exec.Command("docker", "rmi", name).Run()
		_ = exec.Command("docker", "rmi", imageID).Run()
	})
	return name
}
