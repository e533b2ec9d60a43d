package secrets_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/airlock-ci/airlock/secrets"
)

func TestRunnerCredentialSealed(t *testing.T) {
	dir := t.TempDir()
	st, err := secrets.Open(dir, secrets.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	value := []byte(`{"client_id":"c","key":"PRIVATE-KEY-BYTES-0123456789"}`)
	if err := st.PutRunnerCredential("github:build-1", value); err != nil {
		t.Fatal(err)
	}
	got, err := st.RunnerCredential("github:build-1")
	if err != nil || !bytes.Equal(got, value) {
		t.Fatalf("RunnerCredential = %q, %v", got, err)
	}
	if _, err := st.RunnerCredential("github:other"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("missing credential: %v, want ErrNotFound", err)
	}
	// Runner credentials are not secrets a grant could hand out.
	if infos, _ := st.Secrets(); len(infos) != 0 {
		t.Errorf("a runner credential shows up as a secret: %v", infos)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, secrets.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE-KEY-BYTES")) {
		t.Error("the runner credential is stored in plaintext")
	}
	st, err = secrets.Open(dir, secrets.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.DeleteRunnerCredential("github:build-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RunnerCredential("github:build-1"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("after delete: %v, want ErrNotFound", err)
	}
}
