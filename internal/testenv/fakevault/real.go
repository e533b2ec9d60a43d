package fakevault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// Real is a real Vault (or OpenBao) dev server the test started.
type Real struct {
	URL       string
	RootToken string
}

// CachedVault is where testdata/build-vault.sh leaves the Vault binary
// it builds.
const CachedVault = "/var/cache/airlock/vault-1.14.2/vault"

// RequireVault starts `$VAULT_BIN server -dev` (else the binary
// testdata/build-vault.sh cached) on a free loopback port and returns it,
// stopping it when the test ends. Without either it skips the test,
// unless AIRLOCK_TEST_REQUIRE names "vault": then it fails.
func RequireVault(t testing.TB) *Real {
	t.Helper()
	bin := os.Getenv("VAULT_BIN")
	if bin == "" {
		if _, err := os.Stat(CachedVault); err == nil {
			bin = CachedVault
		}
	}
	if bin == "" {
		missing(t, "VAULT_BIN is not set and "+CachedVault+" is missing (run testdata/build-vault.sh, or name a vault or bao binary)")
		return nil
	}
	if _, err := exec.LookPath(bin); err != nil {
		missing(t, "VAULT_BIN "+bin+": "+err.Error())
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("closing probe listener: %v", err)
	}
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	root := "root-" + hex.EncodeToString(b)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "server", "-dev", "-dev-root-token-id="+root, "-dev-listen-address="+addr)
	cmd.Env = append(os.Environ(), "VAULT_DEV_ROOT_TOKEN_ID="+root, "BAO_DEV_ROOT_TOKEN_ID="+root)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait() // killed on purpose; its exit status says so
	})
	url := "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("vault dev server at %s did not become healthy: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &Real{URL: url, RootToken: root}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if testenv.Required("vault") {
		t.Fatalf("required capability %q is missing (AIRLOCK_TEST_REQUIRE): %s", "vault", why)
	}
	t.Skipf("skipping: %s (set AIRLOCK_TEST_REQUIRE=vault to fail instead)", why)
}
