package runner

import (
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
)

// vaultJob is a job whose secrets: read DATABASE_PASSWORD from the fake
// Vault with the job's id token.
func vaultJob(vaultURL, role string, file bool, script []string) fakegitlab.JobSpec {
	return vaultJobWith(vaultURL, "kv", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqb2IifQ.c2lnbmF0dXJl", role, file, script)
}

func vaultJobWith(vaultURL, engine, jwt, role string, file bool, script []string) fakegitlab.JobSpec {
	spec := gitlabSpec(script, nil)
	spec.Variables = append(spec.Variables,
		fakegitlab.Variable{Key: "VAULT_ID_TOKEN", Value: jwt, Masked: true})
	spec.GitLabSecrets = map[string]any{"DATABASE_PASSWORD": map[string]any{
		"vault": map[string]any{
			"server": map[string]any{"url": vaultURL, "auth": map[string]any{"name": "jwt", "path": "jwt",
				"data": map[string]any{"jwt": "$VAULT_ID_TOKEN", "role": role}}},
			"engine": map[string]any{"name": "kv-v2", "path": engine},
			"path":   "staging/db", "field": "password"},
		"file": file}}
	return spec
}

// secrets: against the fake Vault: JWT login with the id token, a KV v2
// read delivered as a masked file variable, the login revoked at the end;
// a refused login fails the job as runner_configuration_error, and a Vault
// server the runner was not told about is never contacted.
func TestAgentVaultSecrets(t *testing.T) {
	e := newAgentEnv(t)
	v := fakevault.New(t)
	v.AddJWTRole("jwt", "web-app", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqb2IifQ.c2lnbmF0dXJl", []string{"read-db"}, time.Hour)
	v.PutKV("kv", "staging/db", map[string]any{"password": "db-pass-0123456789"})
	cfg := e.config(1)
	cfg.VaultServers = []string{v.URL}
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()

	ok := e.gl.Enqueue(vaultJob(v.URL, "web-app", true, []string{
		`test -f "$DATABASE_PASSWORD" && test "$(cat "$DATABASE_PASSWORD")" = db-pass-0123456789 && echo secret-delivered`,
		`cat "$DATABASE_PASSWORD"`}))
	st := waitJob(t, e.gl, ok, 2*time.Minute)
	trace := string(e.gl.Trace(ok))
	if st.Status != "success" || !strings.Contains(trace, "secret-delivered") {
		t.Fatalf("job ended %s/%s, want success with the secret delivered\n%s", st.Status, st.FailureReason, trace)
	}
	if strings.Contains(trace, "db-pass-0123456789") {
		t.Errorf("the secret's value is in the job log")
	}
	toks := v.JWTTokens()
	if len(toks) != 1 || !toks[0].Revoked {
		t.Errorf("Vault logins %+v, want one, revoked at the job's end", toks)
	}

	bad := e.gl.Enqueue(vaultJob(v.URL, "no-such-role", false, []string{"echo SCRIPT-RAN"}))
	st = waitJob(t, e.gl, bad, 2*time.Minute)
	trace = string(e.gl.Trace(bad))
	if st.Status != "failed" || st.FailureReason != "runner_configuration_error" || strings.Contains(trace, "SCRIPT-RAN\n") {
		t.Errorf("job with a refused login ended %s/%s, want runner_configuration_error before the script\n%s", st.Status, st.FailureReason, trace)
	}

	before := v.Requests("POST /v1/auth/jwt/login")
	other := e.gl.Enqueue(vaultJob("http://127.0.0.1:1", "web-app", false, []string{"echo SCRIPT-RAN"}))
	st = waitJob(t, e.gl, other, 2*time.Minute)
	if st.Status != "failed" || st.FailureReason != "runner_configuration_error" {
		t.Errorf("job naming an unlisted Vault ended %s/%s, want runner_configuration_error", st.Status, st.FailureReason)
	}
	if !strings.Contains(string(e.gl.Trace(other)), "vault_servers") {
		t.Errorf("trace does not say why the Vault server was refused:\n%s", e.gl.Trace(other))
	}
	if v.Requests("POST /v1/auth/jwt/login") != before {
		t.Errorf("the fake Vault saw a login for a job naming another server")
	}
}
