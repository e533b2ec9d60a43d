package fakevault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"os/exec"
	"testing"

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
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	root := "root-" + hex.EncodeToString(b)
	addr := testenv.ServeOnLoopback(t, "vault dev server", func(ctx context.Context, addr string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, bin, "server", "-dev", "-dev-root-token-id="+root, "-dev-listen-address="+addr)
		cmd.Env = append(os.Environ(), "VAULT_DEV_ROOT_TOKEN_ID="+root, "BAO_DEV_ROOT_TOKEN_ID="+root)
		return cmd
	}, "/v1/sys/health", http.StatusOK)
	return &Real{URL: "http://" + addr, RootToken: root}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if testenv.Required("vault") {
		t.Fatalf("required capability %q is missing (AIRLOCK_TEST_REQUIRE): %s", "vault", why)
	}
	t.Skipf("skipping: %s (set AIRLOCK_TEST_REQUIRE=vault to fail instead)", why)
}
