package runner

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/api"

	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
)

// secrets: against a real Vault dev server: its JWT auth method verifies
// an id token signed like GitLab's, the KV v2 value reaches the job as a
// masked file variable, and the login token is gone afterwards.
func TestAgentVaultSecretsRealVault(t *testing.T) {
	rv := fakevault.RequireVault(t)
	e := newAgentEnv(t)
	ctx := context.Background()
	c, err := api.NewClient(&api.Config{Address: rv.URL})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(rv.RootToken)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	const iss, aud = "https://gitlab.example.test", "https://vault.example.test"
	steps := []func() error{
		func() error { return c.Sys().EnableAuthWithOptions("jwt", &api.EnableAuthOptions{Type: "jwt"}) },
		func() error {
			_, err := c.Logical().Write("auth/jwt/config", map[string]any{"jwt_validation_pubkeys": []string{pub}, "bound_issuer": iss})
			return err
		},
		func() error {
			return c.Sys().PutPolicy("read-db", `path "secret/data/staging/db" { capabilities = ["read"] }`)
		},
		func() error {
			_, err := c.Logical().Write("auth/jwt/role/web-app", map[string]any{"role_type": "jwt", "user_claim": "sub",
				"bound_audiences": []string{aud}, "token_policies": []string{"read-db"}, "token_ttl": "1h"})
			return err
		},
		func() error {
			_, err := c.KVv2("secret").Put(ctx, "staging/db", map[string]any{"password": "real-vault-pass-42"})
			return err
		},
	}
	for i, f := range steps {
		if err := f(); err != nil {
			t.Fatalf("setting up Vault (step %d): %v", i, err)
		}
	}
	now := time.Now()
	idToken, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss": iss, "aud": aud, "sub": "project_path:platform/web-app:ref_type:branch:ref:main",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	accessors := func() int {
		s, err := c.Logical().List("auth/token/accessors")
		if err != nil || s == nil {
			t.Fatalf("listing token accessors: %v", err)
		}
		keys, _ := s.Data["keys"].([]any)
		return len(keys)
	}
	before := accessors()

	cfg := e.config(1)
	cfg.VaultServers = []string{rv.URL}
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()
	id := e.gl.Enqueue(vaultJobWith(rv.URL, "secret", idToken, "web-app", true, []string{
		`test "$(cat "$DATABASE_PASSWORD")" = real-vault-pass-42 && echo secret-delivered`, `cat "$DATABASE_PASSWORD"`}))
	st := waitJob(t, e.gl, id, 2*time.Minute)
	trace := string(e.gl.Trace(id))
	if st.Status != "success" || !strings.Contains(trace, "secret-delivered") {
		t.Fatalf("job ended %s/%s, want the secret delivered\n%s", st.Status, st.FailureReason, trace)
	}
	if strings.Contains(trace, "real-vault-pass-42") {
		t.Errorf("the secret's value is in the job log")
	}
	if after := accessors(); after != before {
		t.Errorf("Vault holds %d tokens after the job, %d before: the job's login was not revoked", after, before)
	}
}
