package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/secrets"
)

// cli runs one airlock command in-process. A panic or a fault inside
// the store would kill the test binary, failing the test.
func cli(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestCommandsOnDamagedStateDB(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	sd := "--state-dir=" + dir
	for i := range 30 {
		name := "s" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if out, err := cli(t, strings.Repeat("v", 300)+name, "secret", "set", name, sd); err != nil {
			t.Fatalf("secret set: %v\n%s", err, out)
		}
		if out, err := cli(t, "", "grant", "add", name, "--repo", "acme/*", "--deliver", "env", sd); err != nil {
			t.Fatalf("grant add: %v\n%s", err, out)
		}
	}
	db := filepath.Join(dir, secrets.DBFile)
	full, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	commands := [][]string{{"secret", "ls"}, {"grant", "ls"}, {"policy", "ls"}, {"grant", "export"},
		{"policy", "set", "--repo", "acme/*", "--egress", "registry.test:443"}}
	damage := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated to 2 pages", full[:2*4096], "restore"},
		{"truncated to 4 pages", full[:4*4096], "restore"},
		{"zero length", nil, "airlock state init --force"},
	}
	for _, d := range damage {
		t.Run(d.name, func(t *testing.T) {
			if err := os.WriteFile(db, d.data, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, c := range commands {
				out, err := cli(t, "", append(c, sd)...)
				if err == nil || !strings.Contains(err.Error(), d.want) || !strings.Contains(err.Error(), db) {
					t.Errorf("airlock %s = %v (%s), want an error naming %s and saying %q", strings.Join(c, " "), err, out, db, d.want)
				}
			}
			if _, err := cli(t, "", "state", "init", sd); err == nil || !strings.Contains(err.Error(), "--force") {
				t.Errorf("state init without --force = %v, want a refusal pointing at --force", err)
			}
			if got, _ := os.ReadFile(db); !bytes.Equal(got, d.data) {
				t.Errorf("a refused command changed %s", db)
			}
		})
	}
	out, err := cli(t, "", "state", "init", "--force", sd)
	if err != nil || !strings.Contains(out, "moved the old state database to ") {
		t.Fatalf("state init --force = %v\n%s", err, out)
	}
	if out, err := cli(t, "", "secret", "ls", sd); err != nil {
		t.Errorf("secret ls after state init --force: %v\n%s", err, out)
	}
	moved, _ := filepath.Glob(db + ".broken-*")
	if len(moved) != 1 {
		t.Errorf("state init --force left %v, want the old file kept aside once", moved)
	}
}
