package vault_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/vault"
)

func job() secrets.JobIdentity {
	return secrets.JobIdentity{JobID: "42", Repo: "group/app", Ref: "main", Timeout: 10 * time.Minute}
}

func mintReq(sec secrets.Secret, scope map[string]string) secrets.MintRequest {
	return secrets.MintRequest{Secret: sec, Job: job(), TTL: 5 * time.Minute, MaxTTL: 15 * time.Minute,
		Grant: secrets.Grant{ID: "g1", Secret: sec.Name, Scope: scope}}
}

func TestTokenModeMintAndRevoke(t *testing.T) {
	fv := fakevault.New(t)
	b := vault.New(5 * time.Second)
	ctx := context.Background()
	tests := []struct {
		name string
		sec  func() secrets.Secret
	}{
		{"token auth", func() secrets.Secret {
			return secrets.Secret{Name: "v", Backend: secrets.BackendVault, Params: map[string]string{vault.ParamAddress: fv.URL}, Value: []byte(fv.RootToken)}
		}},
		{"approle auth", func() secrets.Secret {
			fv.AddAppRole("role-1", "secret-id-123456", []string{"deploy", "read"}, time.Hour)
			return secrets.Secret{Name: "v", Backend: secrets.BackendVault,
				Params: map[string]string{vault.ParamAddress: fv.URL, vault.ParamRoleID: "role-1"}, Value: []byte("secret-id-123456")}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sec := tc.sec()
			if err := b.ValidateSecret(sec); err != nil {
				t.Fatalf("ValidateSecret: %v", err)
			}
			before := len(fv.ChildTokens())
			cred, err := b.Mint(ctx, mintReq(sec, map[string]string{vault.ScopePolicies: "deploy"}))
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			kids := fv.ChildTokens()
			if len(kids) != before+1 {
				t.Fatalf("fake has %d child tokens, want %d", len(kids), before+1)
			}
			var tok fakevault.Token
			for _, k := range kids {
				if k.ID == string(cred.Value) {
					tok = k
				}
			}
			if tok.ID == "" {
				t.Fatalf("minted value is not a token the fake issued")
			}
			if tok.ExplicitMaxTTL != 15*time.Minute || tok.TTL != 5*time.Minute {
				t.Errorf("token ttl %s explicit_max_ttl %s, want 5m and 15m", tok.TTL, tok.ExplicitMaxTTL)
			}
			if tok.Meta["job"] != "42" || tok.Meta["repo"] != "group/app" || tok.Meta["ref"] != "main" || tok.Meta["grant"] != "g1" {
				t.Errorf("token meta = %v, want job/repo/ref/grant", tok.Meta)
			}
			if strings.Join(tok.Policies, ",") != "deploy" || tok.Type != "service" {
				t.Errorf("token policies %v type %s, want [deploy] service", tok.Policies, tok.Type)
			}
			if strings.Contains(cred.Handle, string(cred.Value)) || !strings.Contains(cred.Handle, tok.Accessor) {
				t.Errorf("handle %q should name the accessor, not the token", cred.Handle)
			}
			rr := secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}
			if err := b.Revoke(ctx, rr); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			for _, k := range fv.LiveChildTokens() {
				if k.ID == tok.ID {
					t.Errorf("token still live after Revoke")
				}
			}
			if err := b.Revoke(ctx, rr); err != nil {
				t.Errorf("second Revoke = %v, want nil (idempotent)", err)
			}
		})
	}
}

func TestTokenModeNeedsPolicies(t *testing.T) {
	fv := fakevault.New(t)
	sec := secrets.Secret{Name: "v", Backend: secrets.BackendVault, Params: map[string]string{vault.ParamAddress: fv.URL}, Value: []byte(fv.RootToken)}
	_, err := vault.New(0).Mint(context.Background(), mintReq(sec, nil))
	if err == nil || !strings.Contains(err.Error(), "policies") {
		t.Errorf("Mint without policies = %v, want an error about policies", err)
	}
	if n := fv.Requests("POST /v1/auth/token/create"); n != 0 {
		t.Errorf("fake saw %d token creates, want 0", n)
	}
}

func TestBadTokenIsClearAndSecretFree(t *testing.T) {
	fv := fakevault.New(t)
	sec := secrets.Secret{Name: "v", Backend: secrets.BackendVault, Params: map[string]string{vault.ParamAddress: fv.URL}, Value: []byte("hvs.not-a-real-token")}
	_, err := vault.New(0).Mint(context.Background(), mintReq(sec, map[string]string{vault.ScopePolicies: "x"}))
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Mint with a bad token = %v, want a 403 permission denied", err)
	}
	if err != nil && strings.Contains(err.Error(), "hvs.not-a-real-token") {
		t.Errorf("error %q contains the token", err)
	}
}

func TestDynamicAndKV(t *testing.T) {
	fv := fakevault.New(t)
	fv.AddDynamic("database/creds/ci", map[string]any{"username": "v-ci-1", "password": "dyn-password-123"}, time.Hour)
	fv.PutKV("secret", "ci/npm", map[string]any{"token": "npm-static-token-1"})
	b := vault.New(0)
	ctx := context.Background()
	params := func(kv ...string) map[string]string {
		p := map[string]string{vault.ParamAddress: fv.URL}
		for i := 0; i < len(kv); i += 2 {
			p[kv[i]] = kv[i+1]
		}
		return p
	}
	dyn := secrets.Secret{Name: "db", Backend: secrets.BackendVault, Value: []byte(fv.RootToken),
		Params: params(vault.ParamMode, vault.ModeDynamic, vault.ParamPath, "database/creds/ci", vault.ParamField, "password")}
	cred, err := b.Mint(ctx, mintReq(dyn, nil))
	if err != nil {
		t.Fatalf("Mint(dynamic): %v", err)
	}
	if string(cred.Value) != "dyn-password-123" || !strings.HasPrefix(cred.Handle, "lease:database/creds/ci/") || cred.Expires.IsZero() {
		t.Errorf("Mint(dynamic) = value %q handle %q expires %v", cred.Value, cred.Handle, cred.Expires)
	}
	if n := len(fv.LiveLeases()); n != 1 {
		t.Fatalf("live leases = %d, want 1", n)
	}
	if err := b.Revoke(ctx, secrets.RevokeRequest{Secret: dyn, Handle: cred.Handle}); err != nil {
		t.Fatalf("Revoke(lease): %v", err)
	}
	if n := len(fv.LiveLeases()); n != 0 {
		t.Errorf("live leases after revoke = %d, want 0", n)
	}
	if err := b.Revoke(ctx, secrets.RevokeRequest{Secret: dyn, Handle: cred.Handle}); err != nil {
		t.Errorf("second Revoke(lease) = %v, want nil", err)
	}

	kv := secrets.Secret{Name: "npm", Backend: secrets.BackendVault, Value: []byte(fv.RootToken),
		Params: params(vault.ParamMode, vault.ModeKV, vault.ParamPath, "ci/npm")}
	cred, err = b.Mint(ctx, mintReq(kv, nil))
	if err != nil {
		t.Fatalf("Mint(kv): %v", err)
	}
	if string(cred.Value) != "npm-static-token-1" || cred.Handle != "" {
		t.Errorf("Mint(kv) = value %q handle %q, want the field and no handle", cred.Value, cred.Handle)
	}
}

func TestRevokeFailureIsAnError(t *testing.T) {
	fv := fakevault.New(t)
	b := vault.New(0)
	sec := secrets.Secret{Name: "v", Backend: secrets.BackendVault, Params: map[string]string{vault.ParamAddress: fv.URL}, Value: []byte(fv.RootToken)}
	cred, err := b.Mint(context.Background(), mintReq(sec, map[string]string{vault.ScopePolicies: "p"}))
	if err != nil {
		t.Fatal(err)
	}
	fv.FailRevokes(1)
	if err := b.Revoke(context.Background(), secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}); err == nil {
		t.Errorf("Revoke during a Vault 500 = nil, want an error")
	}
	if err := b.Revoke(context.Background(), secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}); err != nil {
		t.Errorf("Revoke after recovery = %v", err)
	}
	if n := len(fv.LiveChildTokens()); n != 0 {
		t.Errorf("live child tokens = %d, want 0", n)
	}
}

func TestValidateSecret(t *testing.T) {
	tests := []struct {
		params map[string]string
		want   string
	}{
		{map[string]string{vault.ParamAddress: "https://vault.test:8200"}, ""},
		{map[string]string{}, "address"},
		{map[string]string{vault.ParamAddress: "https://vault.test", vault.ParamMode: "kv"}, "path"},
		{map[string]string{vault.ParamAddress: "https://vault.test", vault.ParamMode: "magic"}, "mode"},
		{map[string]string{vault.ParamAddress: "https://vault.test", "colour": "red"}, "unknown"},
	}
	for _, tc := range tests {
		err := vault.New(0).ValidateSecret(secrets.Secret{Params: tc.params})
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ValidateSecret(%v) = %v, want %q", tc.params, err, tc.want)
		}
	}
}

// TestRealVault runs token mode against a real `vault server -dev`
// (VAULT_BIN, else the binary testdata/build-vault.sh caches).
func TestRealVault(t *testing.T) {
	rv := fakevault.RequireVault(t)
	b := vault.New(10 * time.Second)
	sec := secrets.Secret{Name: "v", Backend: secrets.BackendVault, Params: map[string]string{vault.ParamAddress: rv.URL}, Value: []byte(rv.RootToken)}
	cred, err := b.Mint(context.Background(), mintReq(sec, map[string]string{vault.ScopePolicies: "default"}))
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	rr := secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}
	if err := b.Revoke(context.Background(), rr); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if err := b.Revoke(context.Background(), rr); err != nil {
		t.Errorf("second Revoke = %v, want nil (idempotent against real Vault)", err)
	}
	child := secrets.Secret{Name: "c", Backend: secrets.BackendVault, Params: map[string]string{vault.ParamAddress: rv.URL}, Value: cred.Value}
	if _, err := b.Mint(context.Background(), mintReq(child, map[string]string{vault.ScopePolicies: "default"})); err == nil {
		t.Errorf("minting with the revoked child token succeeded; want 403")
	}
}
