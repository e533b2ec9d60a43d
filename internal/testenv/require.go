// Package testenv holds test helpers: capability probes that really probe,
// the fake internet namespace and fake coordinators.
//
// A probe that fails skips the test, unless AIRLOCK_TEST_REQUIRE names the
// capability (CI sets AIRLOCK_TEST_REQUIRE=docker,root): then it fails the
// test, so that a green CI always means the real thing ran.
package testenv

import (
	"context"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
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
