package secrets_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/airlock-ci/airlock/secrets"
)

func openStore(t *testing.T, dir string) *secrets.Store {
	t.Helper()
	st, err := secrets.Open(dir, secrets.OpenOptions{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func stateDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	return dir
}

func TestStoreSecretRoundTrip(t *testing.T) {
	st := openStore(t, stateDir(t))
	in := secrets.Secret{Name: "deploy-key", Backend: secrets.BackendBuiltin, Value: []byte("s3cr3t-value-1234")}
	if err := st.PutSecret(in); err != nil {
		t.Fatalf("PutSecret: %v", err)
	}
	got, err := st.Secret("deploy-key")
	if err != nil {
		t.Fatalf("Secret: %v", err)
	}
	if !bytes.Equal(got.Value, in.Value) || got.Backend != in.Backend || got.Created.IsZero() {
		t.Errorf("Secret(deploy-key) = %+v, want value %q backend %s and a creation time", got, in.Value, in.Backend)
	}
	infos, err := st.Secrets()
	if err != nil || len(infos) != 1 || infos[0].Name != "deploy-key" {
		t.Fatalf("Secrets() = %+v, %v; want one deploy-key", infos, err)
	}
	if err := st.DeleteSecret("deploy-key"); err != nil {
		t.Fatalf("DeleteSecret: %v", err)
	}
	if _, err := st.Secret("deploy-key"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("Secret after delete: err = %v, want ErrNotFound", err)
	}
}

func TestPutSecretRefusesShortValue(t *testing.T) {
	st := openStore(t, stateDir(t))
	err := st.PutSecret(secrets.Secret{Name: "short", Backend: secrets.BackendBuiltin, Value: []byte("1234567")})
	if err == nil || !strings.Contains(err.Error(), "too short") || strings.Contains(err.Error(), "1234567") {
		t.Errorf("PutSecret(7 bytes) = %v, want a 'too short' error without the value", err)
	}
}

func TestStateFileHoldsNoPlaintext(t *testing.T) {
	dir := stateDir(t)
	st := openStore(t, dir)
	values := []string{"plaintext-canary-0001", "another-canary-value-XYZ"}
	for i, v := range values {
		if err := st.PutSecret(secrets.Secret{Name: "s" + string(rune('a'+i)), Backend: secrets.BackendBuiltin, Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, secrets.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range values {
		for _, form := range []string{v, base64.StdEncoding.EncodeToString([]byte(v)), base64.RawStdEncoding.EncodeToString([]byte(v))} {
			if bytes.Contains(raw, []byte(form)) {
				t.Errorf("state.db contains %q (a form of a secret value)", form)
			}
		}
	}
	// Without the key, the copy reveals nothing and cannot be opened.
	cp := stateDir(t)
	if err := os.MkdirAll(cp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cp, secrets.DBFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Open(cp, secrets.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Open(copy without key) = %v, want a missing-key error", err)
	}
}

// snapshot returns every file of dir with its mode and bytes.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fi.Mode().String() + ":" + string(b)
	}
	return out
}

func TestOpenRefusesAndTouchesNothing(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		want    string
	}{
		{
			name: "key readable by others",
			prepare: func(t *testing.T, dir string) {
				if err := os.Chmod(filepath.Join(dir, secrets.KeyFile), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: "chmod 600",
		},
		{
			name: "state dir writable by others",
			prepare: func(t *testing.T, dir string) {
				if err := os.Chmod(dir, 0o777); err != nil {
					t.Fatal(err)
				}
			},
			want: "must not be writable by group or others",
		},
		{
			name: "wrong key",
			prepare: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, secrets.KeyFile), bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want: "does not match",
		},
		{
			name: "key missing while secrets exist",
			prepare: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, secrets.KeyFile)); err != nil {
					t.Fatal(err)
				}
			},
			want: "is missing",
		},
		{
			name: "key of the wrong size",
			prepare: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, secrets.KeyFile), []byte("short"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want: "want 32",
		},
		{
			name: "corrupt database",
			prepare: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, secrets.DBFile), bytes.Repeat([]byte("garbage!"), 2048), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want: "corrupt",
		},
		{
			name: "newer schema",
			prepare: func(t *testing.T, dir string) {
				db, err := bolt.Open(filepath.Join(dir, secrets.DBFile), 0o600, nil)
				if err != nil {
					t.Fatal(err)
				}
				err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("99")) })
				if err := errors.Join(err, db.Close()); err != nil {
					t.Fatal(err)
				}
			},
			want: "upgrade airlock",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := stateDir(t)
			st, err := secrets.Open(dir, secrets.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := st.PutSecret(secrets.Secret{Name: "x", Backend: secrets.BackendBuiltin, Value: []byte("value-that-is-long")}); err != nil {
				t.Fatal(err)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			tc.prepare(t, dir)
			before := snapshot(t, dir)
			st, err = secrets.Open(dir, secrets.OpenOptions{})
			if err == nil {
				_ = st.Close()
				t.Fatalf("Open succeeded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open error = %q, want it to contain %q", err, tc.want)
			}
			if after := snapshot(t, dir); len(after) != len(before) {
				t.Errorf("Open changed the directory: %d files before, %d after", len(before), len(after))
			} else {
				for name, b := range before {
					if after[name] != b {
						t.Errorf("Open changed %s", name)
					}
				}
			}
		})
	}
}

func TestOpenLockedSaysInUse(t *testing.T) {
	dir := stateDir(t)
	openStore(t, dir)
	_, err := secrets.Open(dir, secrets.OpenOptions{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, secrets.ErrInUse) || !strings.Contains(err.Error(), "in use by another airlock process") {
		t.Errorf("second Open = %v, want ErrInUse", err)
	}
}

func TestKeyFileCreated0600(t *testing.T) {
	dir := stateDir(t)
	openStore(t, dir)
	fi, err := os.Stat(filepath.Join(dir, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Errorf("state.key mode %v size %d, want 0600 and 32 bytes", fi.Mode().Perm(), fi.Size())
	}
}

func TestMissingKeyWithoutSecretsGetsANewKey(t *testing.T) {
	dir := stateDir(t)
	st, err := secrets.Open(dir, secrets.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetPolicy(secrets.EgressPolicy{RepoPattern: "acme/**", Egress: []string{"registry.test:443"}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, secrets.KeyFile)); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	if ps, err := st.Policies(); err != nil || len(ps) != 1 {
		t.Errorf("Policies() after re-keying = %v, %v; want the one policy", ps, err)
	}
	if err := st.PutSecret(secrets.Secret{Name: "x", Backend: secrets.BackendBuiltin, Value: []byte("value-long-enough")}); err != nil {
		t.Errorf("PutSecret after re-keying: %v", err)
	}
}

func TestSharedStoreLetsOthersIn(t *testing.T) {
	dir := stateDir(t)
	shared, err := secrets.Open(dir, secrets.OpenOptions{Shared: true, LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shared.Close() })
	if err := shared.PutSecret(secrets.Secret{Name: "x", Backend: secrets.BackendBuiltin, Value: []byte("value-long-enough")}); err != nil {
		t.Fatal(err)
	}
	// An admin command opens the store exclusively in between.
	admin, err := secrets.Open(dir, secrets.OpenOptions{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open next to a shared store: %v", err)
	}
	if _, err := admin.AddGrant(secrets.Grant{Secret: "x", Repo: "acme/*", Delivery: "env"}); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.Grants(); !errors.Is(err, secrets.ErrInUse) {
		t.Errorf("shared Grants() while the admin holds the lock = %v, want ErrInUse", err)
	}
	if err := admin.Close(); err != nil {
		t.Fatal(err)
	}
	gs, err := shared.Grants()
	if err != nil || len(gs) != 1 {
		t.Errorf("shared Grants() = %d grants, %v; want the admin's grant", len(gs), err)
	}
	sec, err := shared.Secret("x")
	if err != nil || string(sec.Value) != "value-long-enough" {
		t.Errorf("shared Secret(x) = %q, %v", sec.Value, err)
	}
}

// One pattern may have a ceiling for any instance and one per instance;
// each is replaced and removed on its own, and a bad instance is refused.
func TestPoliciesPerInstance(t *testing.T) {
	st := openStore(t, stateDir(t))
	a := "https://gitlab.a.test"
	for _, p := range []secrets.EgressPolicy{
		{RepoPattern: "acme/*", Egress: []string{"any.test:443"}},
		{RepoPattern: "acme/*", Instance: a, Egress: []string{"a.test:443"}},
		{RepoPattern: "acme/*", Instance: a + "/", Egress: []string{"a2.test:443"}}, // the same instance: replaces
	} {
		if err := st.SetPolicy(p); err != nil {
			t.Fatalf("SetPolicy(%s): %v", p.Scope(), err)
		}
	}
	ps, err := st.Policies()
	if err != nil || len(ps) != 2 {
		t.Fatalf("Policies() = %+v, %v; want two", ps, err)
	}
	if p, ok, err := st.EgressCeiling("acme/app", "https://GITLAB.A.TEST"); err != nil || !ok || p.Egress[0] != "a2.test:443" {
		t.Errorf("EgressCeiling(acme/app on a) = %+v, %t, %v; want a2.test", p, ok, err)
	}
	if err := st.DeletePolicy("acme/*", a); err != nil {
		t.Fatal(err)
	}
	if p, ok, _ := st.EgressCeiling("acme/app", a); !ok || p.Instance != "" {
		t.Errorf("after removing a's ceiling: %+v, %t; want the one for any instance", p, ok)
	}
	if err := st.DeletePolicy("acme/*", a); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("DeletePolicy of a removed ceiling = %v, want ErrNotFound", err)
	}
	err = st.SetPolicy(secrets.EgressPolicy{RepoPattern: "acme/*", Instance: "gitlab.a.test"})
	if err == nil || !strings.Contains(err.Error(), `instance "gitlab.a.test"`) {
		t.Errorf("SetPolicy with an instance that is not a URL = %v, want it named", err)
	}
}
