package gitlab

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/runner/job"
)

func secretsPayload(t *testing.T, url, engine string, file *bool) *JobResponse {
	t.Helper()
	s := map[string]any{"vault": map[string]any{
		"server": map[string]any{"url": url, "auth": map[string]any{"name": "jwt", "path": "jwt",
			"data": map[string]any{"jwt": "${VAULT_ID_TOKEN}", "role": "r"}}},
		"engine": map[string]any{"name": engine, "path": "kv"}, "path": "app/db", "field": "password"}}
	if file != nil {
		s["file"] = *file
	}
	raw, _ := json.Marshal(s)
	return &JobResponse{ID: 7, Token: "t",
		Variables: []JobVariable{{Key: "VAULT_ID_TOKEN", Value: "the-jwt", Masked: true}},
		Secrets:   map[string]json.RawMessage{"DB_PASSWORD": raw}}
}

func TestResolveSecretsKV1AndRevoke(t *testing.T) {
	v := fakevault.New(t)
	v.AddJWTRole("jwt", "r", "the-jwt", []string{"p"}, time.Hour)
	v.PutKV1("kv", "app/db", map[string]any{"password": 12345})
	no := false
	p := NewPipeline(nil, secretsPayload(t, v.URL, "kv-v1", &no), PipelineOptions{})
	vars, reads, revoke, err := p.ResolveSecrets(context.Background(), SecretsOptions{VaultServers: []string{v.URL}})
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != 1 || vars[0].Key != "DB_PASSWORD" || vars[0].Value != "12345" || !vars[0].Masked || vars[0].File {
		t.Errorf("vars = %+v, want DB_PASSWORD=12345, masked, not a file (file: false)", vars)
	}
	if len(reads) != 1 || reads[0].Path != "kv/app/db" || reads[0].Login == "" {
		t.Errorf("reads = %+v, want one of kv/app/db with the login's accessor", reads)
	}
	if err := revoke(context.Background()); err != nil {
		t.Fatal(err)
	}
	if toks := v.JWTTokens(); len(toks) != 1 || !toks[0].Revoked {
		t.Errorf("logins = %+v, want one, revoked", toks)
	}
}

func TestResolveSecretsFailureReasons(t *testing.T) {
	status := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		w.Write([]byte(`{"errors":["boom"]}`))
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		status int
		want   FailureReason
	}{{403, ReasonConfiguration}, {400, ReasonConfiguration}, {503, ReasonExternalDependency}, {500, ReasonExternalDependency}} {
		status = tc.status
		p := NewPipeline(nil, secretsPayload(t, srv.URL, "kv-v2", nil), PipelineOptions{})
		_, _, _, err := p.ResolveSecrets(context.Background(), SecretsOptions{VaultServers: []string{srv.URL}})
		var re *job.ReasonError
		if !errors.As(err, &re) || re.Reason != job.FailureReason(tc.want) {
			t.Errorf("Vault %d: err = %v, want reason %s", tc.status, err, tc.want)
		}
	}
	// Unreachable: the runner's failure.
	p := NewPipeline(nil, secretsPayload(t, "http://127.0.0.1:1", "kv-v2", nil), PipelineOptions{})
	_, _, _, err := p.ResolveSecrets(context.Background(), SecretsOptions{VaultServers: []string{"http://127.0.0.1:1"}})
	var re *job.ReasonError
	if !errors.As(err, &re) || re.Reason != job.FailureReason(ReasonRunnerSystemFailure) {
		t.Errorf("unreachable Vault: err = %v, want runner_system_failure", err)
	}
}
