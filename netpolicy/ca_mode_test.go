package netpolicy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A CA key others may read is refused: whoever reads it can impersonate
// every credential-bound host to the jobs.
func TestLoadCARefusesWideKeyMode(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, CAKeyFile)
	if st, _ := os.Stat(key); st.Mode().Perm() != 0o600 {
		t.Errorf("new CA key mode = %04o, want 0600", st.Mode().Perm())
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateCA(dir)
	if err == nil || !strings.Contains(err.Error(), "wider than 0600") {
		t.Errorf("LoadOrCreateCA with a 0644 key = %v, want a mode error", err)
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err != nil {
		t.Errorf("LoadOrCreateCA after chmod 600: %v", err)
	}
}
