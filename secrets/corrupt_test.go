package secrets_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

const pageSize = 4096

// corruptionSeed fills a store with enough secrets, grants, policies and
// journal entries to span many pages, closes it and returns its bytes.
func corruptionSeed(t *testing.T) (dir string, db []byte) {
	t.Helper()
	dir = stateDir(t)
	st, err := secrets.Open(dir, secrets.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		name := fmt.Sprintf("s%02d", i)
		if err := st.PutSecret(secrets.Secret{Name: name, Backend: secrets.BackendBuiltin, Value: []byte(strings.Repeat("v", 200) + name)}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.AddGrant(secrets.Grant{Secret: name, Repo: "acme/*", Delivery: job.DeliverEnv}); err != nil {
			t.Fatal(err)
		}
		if err := st.SetPolicy(secrets.EgressPolicy{RepoPattern: "acme/p" + name, Egress: []string{"registry.test:443"}}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := secrets.NewBroker(secrets.BrokerOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		jid := fmt.Sprintf("job-%d", i)
		if _, err := b.Prepare(context.Background(), identity(jid), requests("s01", "s02", "s03")); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := b.Release(context.Background(), jid); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = os.ReadFile(filepath.Join(dir, secrets.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(db) < 8*pageSize {
		t.Fatalf("seeded state.db has %d bytes, want at least 8 pages", len(db))
	}
	return dir, db
}

// withDB writes db as dir's state.db.
func withDB(t *testing.T, dir string, db []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, secrets.DBFile), db, 0o600); err != nil {
		t.Fatal(err)
	}
}

// exercise runs what `exec`/`run` and the admin commands do with a store,
// turning a panic into a test failure (a fault that is not turned into a
// panic kills the test binary, which fails it too).
func exercise(t *testing.T, dir string, shared bool) (errs []error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("store panicked: %v", r)
		}
	}()
	st, err := secrets.Open(dir, secrets.OpenOptions{Shared: shared, LockTimeout: 200 * time.Millisecond})
	if err != nil {
		return []error{err}
	}
	defer func() { _ = st.Close() }()
	b, err := secrets.NewBroker(secrets.BrokerOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = st.Secrets()
	errs = append(errs, err)
	_, err = st.Grants()
	errs = append(errs, err)
	_, err = st.Policies()
	errs = append(errs, err)
	_, err = st.Leases("")
	errs = append(errs, err)
	_, err = st.Jobs("")
	errs = append(errs, err)
	errs = append(errs, b.Sweep(ctx))
	_, err = b.Recover(ctx)
	errs = append(errs, err)
	if _, err := b.Prepare(ctx, identity("job-new"), requests("s05")); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, b.Release(ctx, "job-new"))
	}
	_, _, err = st.EgressCeiling("acme/ps07", "")
	errs = append(errs, err)
	errs = append(errs, st.PutSecret(secrets.Secret{Name: "late", Backend: secrets.BackendBuiltin, Value: []byte("late-value-long-enough")}))
	return errs
}

// failures returns the non-nil errors.
func failures(errs []error) []error {
	var out []error
	for _, e := range errs {
		if e != nil {
			out = append(out, e)
		}
	}
	return out
}

func TestTruncatedStateDBFailsCleanly(t *testing.T) {
	dir, db := corruptionSeed(t)
	for _, shared := range []bool{false, true} {
		for pages := 1; pages*pageSize < len(db); pages *= 2 {
			t.Run(fmt.Sprintf("shared=%v/pages=%d", shared, pages), func(t *testing.T) {
				withDB(t, dir, db[:pages*pageSize])
				errs := failures(exercise(t, dir, shared))
				if len(errs) == 0 {
					t.Fatalf("every operation succeeded on a state.db truncated to %d of %d bytes", pages*pageSize, len(db))
				}
				for _, err := range errs {
					msg := err.Error()
					if !strings.Contains(msg, filepath.Join(dir, secrets.DBFile)) || !strings.Contains(msg, "restore") {
						t.Errorf("error %q does not name the file and how to restore it", msg)
					}
				}
			})
		}
	}
}

func TestFlippedBytePerPageNeverPanics(t *testing.T) {
	dir, db := corruptionSeed(t)
	// Bytes inside the page header and at the start of the data, where
	// bbolt keeps page ids, counts, element offsets and bucket roots.
	offsets := []int{8, 17, 40}
	for page := 0; page*pageSize < len(db); page++ {
		for _, off := range offsets {
			bad := append([]byte(nil), db...)
			bad[page*pageSize+off] ^= 0x5a
			withDB(t, dir, bad)
			// exec's exclusive store and run's shared one, page by page in turn.
			for _, shared := range []bool{page%2 == 1} {
				if t.Failed() {
					return
				}
				for _, err := range failures(exercise(t, dir, shared)) {
					if errors.Is(err, secrets.ErrCorrupt) && !strings.Contains(err.Error(), "restore") {
						t.Errorf("page %d offset %d: corrupt-store error %q does not say how to restore", page, off, err)
					}
				}
			}
		}
	}
}

func TestEmptyStateDBIsNotReinitialised(t *testing.T) {
	dir := stateDir(t)
	st := openStore(t, dir)
	if err := st.PutSecret(secrets.Secret{Name: "x", Backend: secrets.BackendBuiltin, Value: []byte("value-that-is-long")}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		prepare func(path string) error
		want    string
	}{
		{"zero length", func(p string) error { return os.Truncate(p, 0) }, "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, secrets.DBFile)
			if err := tc.prepare(path); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			for _, opts := range []secrets.OpenOptions{{}, {Shared: true}, {MustExist: true}} {
				st, err := secrets.Open(dir, opts)
				if err == nil {
					_ = st.Close()
					t.Fatalf("Open(%+v) re-initialised a store that existed", opts)
				}
				if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "airlock state init --force") {
					t.Errorf("Open(%+v) = %q, want it to say %q and name airlock state init --force", opts, err, tc.want)
				}
			}
			if after := snapshot(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("a refused Open changed the state directory")
			}
			// The explicit re-initialisation keeps the old file aside.
			if _, err := secrets.Reinit(dir); err != nil {
				t.Fatalf("Reinit: %v", err)
			}
			st := openStore(t, dir)
			if infos, err := st.Secrets(); err != nil || len(infos) != 0 {
				t.Errorf("Secrets() after Reinit = %v, %v; want an empty store", infos, err)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
