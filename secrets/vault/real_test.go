package vault_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/vault"
)

// rootClient is the test's own admin client of a real dev server.
func rootClient(t *testing.T, rv *fakevault.Real) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: rv.URL})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(rv.RootToken)
	return c
}

// TestRealVaultChildTokenRevokedByAccessor: a child token works until it
// is revoked by its accessor, after which Vault refuses it.
func TestRealVaultChildTokenRevokedByAccessor(t *testing.T) {
	rv := fakevault.RequireVault(t)
	ctx := context.Background()
	b := vault.New(0)
	sec := secrets.Secret{Name: "v", Backend: secrets.BackendVault, Params: map[string]string{vault.ParamAddress: rv.URL}, Value: []byte(rv.RootToken)}
	cred, err := b.Mint(ctx, mintReq(sec, map[string]string{vault.ScopePolicies: "default"}))
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if !strings.HasPrefix(cred.Handle, "accessor:") {
		t.Errorf("handle %q, want an accessor handle", cred.Handle)
	}
	c := rootClient(t, rv)
	child, _ := c.Clone()
	child.SetToken(string(cred.Value))
	self, err := child.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		t.Fatalf("looking up the child token: %v", err)
	}
	if meta, _ := self.Data["meta"].(map[string]any); meta["job"] != "42" {
		t.Errorf("child token meta = %v, want the job id", self.Data["meta"])
	}
	if err := b.Revoke(ctx, secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := child.Auth().Token().LookupSelfWithContext(ctx); err == nil {
		t.Errorf("the child token still works after revocation by accessor")
	}
}

// TestRealVaultDynamicLeaseRevoked issues a certificate with a lease (PKI
// role with generate_lease) and revokes the lease.
func TestRealVaultDynamicLeaseRevoked(t *testing.T) {
	rv := fakevault.RequireVault(t)
	ctx := context.Background()
	c := rootClient(t, rv)
	if err := c.Sys().MountWithContext(ctx, "pki", &api.MountInput{Type: "pki", Config: api.MountConfigInput{MaxLeaseTTL: "1h"}}); err != nil {
		t.Fatalf("mounting pki: %v", err)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "pki/root/generate/internal", map[string]any{"common_name": "airlock-test-ca.test", "ttl": "1h"}); err != nil {
		t.Fatalf("generating the test CA: %v", err)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "pki/roles/ci", map[string]any{"allowed_domains": "ci.test", "allow_subdomains": true,
		"generate_lease": true, "max_ttl": "10m"}); err != nil {
		t.Fatalf("creating the pki role: %v", err)
	}
	b := vault.New(0)
	sec := secrets.Secret{Name: "cert", Backend: secrets.BackendVault, Value: []byte(rv.RootToken), Params: map[string]string{
		vault.ParamAddress: rv.URL, vault.ParamMode: vault.ModeDynamic, vault.ParamPath: "pki/issue/ci",
		vault.ParamWrite: `{"common_name":"job-42.ci.test","ttl":"5m"}`, vault.ParamField: "private_key"}}
	if err := b.ValidateSecret(sec); err != nil {
		t.Fatal(err)
	}
	cred, err := b.Mint(ctx, mintReq(sec, nil))
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if !strings.Contains(string(cred.Value), "PRIVATE KEY") || cred.Expires.IsZero() {
		t.Errorf("minted value is not a private key with an expiry (expires %v)", cred.Expires)
	}
	lease, ok := strings.CutPrefix(cred.Handle, "lease:")
	if !ok {
		t.Fatalf("handle %q, want a lease handle", cred.Handle)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": lease}); err != nil {
		t.Fatalf("the lease is unknown to Vault before revocation: %v", err)
	}
	if err := b.Revoke(ctx, secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": lease}); err == nil {
		t.Errorf("the lease is still live after revocation")
	}
	if err := b.Revoke(ctx, secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}); err != nil {
		t.Errorf("second Revoke = %v, want nil (idempotent)", err)
	}
}

// TestRealVaultKVv2Read reads one field of a KV v2 value, the latest
// version.
func TestRealVaultKVv2Read(t *testing.T) {
	rv := fakevault.RequireVault(t)
	ctx := context.Background()
	c := rootClient(t, rv)
	kv := c.KVv2("secret")
	if _, err := kv.Put(ctx, "ci/app", map[string]any{"token": "kv-value-version-1"}); err != nil {
		t.Fatalf("writing kv: %v", err)
	}
	if _, err := kv.Put(ctx, "ci/app", map[string]any{"token": "kv-value-version-2", "other": "x"}); err != nil {
		t.Fatalf("writing kv: %v", err)
	}
	b := vault.New(0)
	sec := secrets.Secret{Name: "kv", Backend: secrets.BackendVault, Value: []byte(rv.RootToken), Params: map[string]string{
		vault.ParamAddress: rv.URL, vault.ParamMode: vault.ModeKV, vault.ParamPath: "ci/app", vault.ParamField: "token"}}
	cred, err := b.Mint(ctx, mintReq(sec, nil))
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if string(cred.Value) != "kv-value-version-2" || cred.Handle != "" {
		t.Errorf("kv Mint = %q handle %q, want the latest version and no handle", cred.Value, cred.Handle)
	}
}
