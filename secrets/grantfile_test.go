package secrets_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

func TestGrantExportImportRoundTrip(t *testing.T) {
	st := openStore(t, stateDir(t))
	if err := st.PutSecret(secrets.Secret{Name: "deploy", Backend: secrets.BackendBuiltin, Value: []byte("value-long-enough")}); err != nil {
		t.Fatal(err)
	}
	in := []secrets.Grant{
		{Secret: "deploy", Repo: "group/**", Refs: []string{"main", "release/*"}, ProtectedOnly: true, Envs: []string{"prod"},
			Source: job.SourceGitLab, Delivery: job.DeliverProxy, TTL: 15 * time.Minute, Hosts: []string{"api.allowed.test:443"},
			Header: "X-Token: {{value}}", Scope: map[string]string{"k": "v"}},
		{Secret: "deploy", Repo: "solo/app", Delivery: job.DeliverFile, Var: "DEPLOY_FILE"},
	}
	stored, err := st.PutGrants(in)
	if err != nil {
		t.Fatalf("PutGrants: %v", err)
	}
	var buf bytes.Buffer
	if err := secrets.ExportGrants(&buf, stored); err != nil {
		t.Fatal(err)
	}
	parsed, err := secrets.ParseGrants(&buf)
	if err != nil {
		t.Fatalf("ParseGrants(export): %v\n%s", err, buf.String())
	}
	if len(parsed) != len(stored) {
		t.Fatalf("ParseGrants returned %d grants, want %d", len(parsed), len(stored))
	}
	for i := range parsed {
		a, b := parsed[i], stored[i]
		if a.ID != b.ID || a.Repo != b.Repo || a.TTL != b.TTL || a.Delivery != b.Delivery || a.Header != b.Header ||
			strings.Join(a.Refs, ",") != strings.Join(b.Refs, ",") || a.ProtectedOnly != b.ProtectedOnly || a.Scope["k"] != b.Scope["k"] ||
			!a.Created.Equal(b.Created.Truncate(time.Microsecond)) && !a.Created.Equal(b.Created) {
			t.Errorf("round trip of grant %d:\n got %+v\nwant %+v", i, a, b)
		}
	}
}

func TestImportValidatesEverythingBeforeWriting(t *testing.T) {
	st := openStore(t, stateDir(t))
	if err := st.PutSecret(secrets.Secret{Name: "deploy", Backend: secrets.BackendBuiltin, Value: []byte("value-long-enough")}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		toml string
		want []string
	}{
		{
			name: "bad entries are all named",
			toml: `
[[grant]]
secret = "deploy"
repo = "group/*"
deliver = "env"

[[grant]]
id = "bad1"
secret = "deploy"
repo = "group/*"
deliver = "carrier-pigeon"

[[grant]]
id = "bad2"
secret = "deploy"
repo = "group/*"
deliver = "env"
ttl = "forever"
`,
			want: []string{`grant 2 (id "bad1"`, "deliver", `grant 3 (id "bad2"`, "ttl"},
		},
		{
			name: "unknown key",
			toml: `
[[grant]]
secret = "deploy"
repo = "group/*"
deliver = "env"
protectd_only = true
`,
			want: []string{"grant 1", "protectd_only", "unknown key"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := secrets.ParseGrants(strings.NewReader(tc.toml))
			if err == nil {
				t.Fatal("ParseGrants succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseGrants error %q does not contain %q", err, w)
				}
			}
		})
	}

	// The store also refuses the whole batch when one entry names no secret.
	_, err := st.PutGrants([]secrets.Grant{
		{Secret: "deploy", Repo: "a/*", Delivery: job.DeliverEnv},
		{Secret: "nosuch", Repo: "a/*", Delivery: job.DeliverEnv},
	})
	if err == nil || !strings.Contains(err.Error(), `grant 2`) || !strings.Contains(err.Error(), `no secret named "nosuch"`) {
		t.Errorf("PutGrants with an unknown secret = %v, want an error naming grant 2", err)
	}
	gs, err := st.Grants()
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 0 {
		t.Errorf("after a refused import the store holds %d grants, want 0", len(gs))
	}
}
