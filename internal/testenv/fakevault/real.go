package fakevault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
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
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	root := "root-" + hex.EncodeToString(b)
	// The free port is found by listening and closing: another process
	// may take it before Vault binds it. A server that exits is started
	// again on another port; its output is shown when it never answers.
	var url string
	var lastOut string
	for try := 1; ; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		addr := l.Addr().String()
		if err := l.Close(); err != nil {
			t.Fatalf("closing probe listener: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "server", "-dev", "-dev-root-token-id="+root, "-dev-listen-address="+addr)
		cmd.Env = append(os.Environ(), "VAULT_DEV_ROOT_TOKEN_ID="+root, "BAO_DEV_ROOT_TOKEN_ID="+root)
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("starting %s: %v", bin, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() { cancel(); <-exited }
		url = "http://" + addr
		if waitHealthy(url, exited, 60*time.Second) {
			t.Cleanup(stop) // killed on purpose; its exit status says so
			break
		}
		stop()
		lastOut = out.String()
		if try == 3 {
			t.Fatalf("vault dev server did not become healthy (3 tries, the last at %s); its output:\n%s", url, lastOut)
		}
	}
	return &Real{URL: url, RootToken: root}
}

// waitHealthy polls url's health until it answers 200 (true), the server
// exits or the wait ends (false).
func waitHealthy(url string, exited <-chan struct{}, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		select {
		case <-exited:
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 64<<10 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func missing(t testing.TB, why string) {
	t.Helper()
	if testenv.Required("vault") {
		t.Fatalf("required capability %q is missing (AIRLOCK_TEST_REQUIRE): %s", "vault", why)
	}
	t.Skipf("skipping: %s (set AIRLOCK_TEST_REQUIRE=vault to fail instead)", why)
}
