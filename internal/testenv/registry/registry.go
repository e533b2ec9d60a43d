// Package registry starts a real container registry (CNCF distribution,
// built by testdata/build-registry.sh) on loopback for tests of private
// image pulls, with htpasswd authentication, and pushes a local image to
// it through the Docker engine.
package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	dreg "github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	"golang.org/x/crypto/bcrypt"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// Cached is where testdata/build-registry.sh leaves the binary.
const Cached = "/var/cache/airlock/registry-3.1.2/registry"

// Registry is a running registry that needs Username and Password.
type Registry struct {
	Host               string // 127.0.0.1:PORT
	Username, Password string
}

// Require starts `$REGISTRY_BIN serve` (else the cached binary) on a free
// loopback port with filesystem storage in a temporary directory, and
// stops it when the test ends. Without a binary it skips the test, unless
// AIRLOCK_TEST_REQUIRE names "registry": then it fails.
func Require(t testing.TB) *Registry {
	t.Helper()
	b := make([]byte, 12)
	rand.Read(b)
	return RequireUser(t, "puller", "pw-"+hex.EncodeToString(b))
}

// RequireOpen is Require for a registry anyone may pull from and push to
// (Username and Password are empty).
func RequireOpen(t testing.TB) *Registry {
	t.Helper()
	return RequireUser(t, "", "")
}

// RequireUser is Require with the one user the registry accepts ("": no
// authentication at all).
func RequireUser(t testing.TB, username, password string) *Registry {
	t.Helper()
	bin := os.Getenv("REGISTRY_BIN")
	if bin == "" {
		if _, err := os.Stat(Cached); err == nil {
			bin = Cached
		}
	}
	if bin == "" {
		missing(t, "REGISTRY_BIN is not set and "+Cached+" is missing (run testdata/build-registry.sh)")
		return nil
	}
	if _, err := exec.LookPath(bin); err != nil {
		missing(t, "REGISTRY_BIN "+bin+": "+err.Error())
		return nil
	}
	dir := t.TempDir()
	auth, ready := "", http.StatusOK
	if username != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(username+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: airlock-test\n    path: %s\n", htpasswd)
		ready = http.StatusUnauthorized // it wants a password
	}
	addr := testenv.ServeOnLoopback(t, "registry", func(ctx context.Context, addr string) *exec.Cmd {
		cfg := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, filepath.Join(dir, "data"), addr, auth)), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, bin, "serve", cfg)
		cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
		return cmd
	}, "/v2/", ready)
	return &Registry{Host: addr, Username: username, Password: password}
}

// Push tags the local image src as HOST/name and pushes it with the
// registry's credentials, then removes the local tag: the engine must
// pull it again to have it. It returns the pushed reference.
func (r *Registry) Push(t testing.TB, src, name string) string {
	t.Helper()
	ctx := context.Background()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ref := r.Host + "/" + name
	if err := cli.ImageTag(ctx, src, ref); err != nil {
		t.Fatalf("tagging %s as %s: %v", src, ref, err)
	}
	auth, _ := dreg.EncodeAuthConfig(dreg.AuthConfig{Username: r.Username, Password: r.Password, ServerAddress: r.Host})
	rc, err := cli.ImagePush(ctx, ref, image.PushOptions{RegistryAuth: auth})
	if err == nil {
		err = executors.DrainProgress(rc)
	}
	if err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	r.Forget(t, ref)
	t.Cleanup(func() { r.Forget(t, ref) })
	return ref
}

// Forget removes the local copy of ref (no error when there is none).
func (r *Registry) Forget(t testing.TB, ref string) {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.ImageRemove(context.Background(), ref, image.RemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
		t.Errorf("removing local %s: %v", ref, err)
	}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if testenv.Required("registry") {
		t.Fatalf("required capability %q is missing (AIRLOCK_TEST_REQUIRE): %s", "registry", why)
	}
	t.Skipf("skipping: %s (set AIRLOCK_TEST_REQUIRE=registry to fail instead)", why)
}
