package githubapp_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/githubapp"
)

func appSecret(fg *fakegithub.App, key []byte) secrets.Secret {
	return secrets.Secret{Name: "gh", Backend: secrets.BackendGitHubApp, Value: key, Params: map[string]string{
		githubapp.ParamAppID: strconv.FormatInt(fg.AppID, 10), githubapp.ParamInstallationID: "100",
		githubapp.ParamAPIURL: fg.URL, githubapp.ParamOwner: "acme"}}
}

func mintReq(sec secrets.Secret, repo string, scope map[string]string) secrets.MintRequest {
	return secrets.MintRequest{Secret: sec, Grant: secrets.Grant{ID: "g1", Secret: sec.Name, Scope: scope},
		Job: secrets.JobIdentity{JobID: "7", Repo: repo, Ref: "main"}, TTL: time.Hour, MaxTTL: time.Hour}
}

func tokenWorks(t *testing.T, url, token string) bool {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+"/installation/repositories", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func TestMintScopedTokenAndRevoke(t *testing.T) {
	fg := fakegithub.New(t)
	b := githubapp.New(nil)
	sec := appSecret(fg, fg.KeyPEM)
	if err := b.ValidateSecret(sec); err != nil {
		t.Fatalf("ValidateSecret: %v", err)
	}
	ctx := context.Background()
	cred, err := b.Mint(ctx, mintReq(sec, "acme/widgets", map[string]string{"contents": "read", "packages": "write"}))
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	toks := fg.Tokens()
	if len(toks) != 1 {
		t.Fatalf("fake issued %d tokens, want 1", len(toks))
	}
	tok := toks[0]
	if string(cred.Value) != tok.Value || cred.Handle != tok.Value || !cred.Expires.Equal(tok.Expires) {
		t.Errorf("credential %q/%q expires %v; fake token %q expires %v", cred.Value, cred.Handle, cred.Expires, tok.Value, tok.Expires)
	}
	if strings.Join(tok.Repositories, ",") != "widgets" || tok.Permissions["contents"] != "read" || tok.Permissions["packages"] != "write" {
		t.Errorf("token scoped to %v with %v, want [widgets] contents=read packages=write", tok.Repositories, tok.Permissions)
	}
	if !tokenWorks(t, fg.URL, tok.Value) {
		t.Fatal("fresh token is refused by the fake")
	}
	rr := secrets.RevokeRequest{Secret: sec, Handle: cred.Handle}
	if err := b.Revoke(ctx, rr); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if tokenWorks(t, fg.URL, tok.Value) {
		t.Error("revoked token still works")
	}
	if err := b.Revoke(ctx, rr); err != nil {
		t.Errorf("second Revoke = %v, want nil (401 = already revoked)", err)
	}
}

func TestMintRefusals(t *testing.T) {
	fg := fakegithub.New(t)
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(otherKey)})
	tests := []struct {
		name  string
		sec   secrets.Secret
		repo  string
		scope map[string]string
		want  string
	}{
		{"wrong key", appSecret(fg, otherPEM), "acme/widgets", nil, "401"},
		{"other owner", appSecret(fg, fg.KeyPEM), "evil/widgets", nil, "not owned"},
		{"bad permission", appSecret(fg, fg.KeyPEM), "acme/widgets", map[string]string{"contents": "all"}, "read, write or admin"},
		{"not owner/name", appSecret(fg, fg.KeyPEM), "widgets", nil, "owner/name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := githubapp.New(nil).Mint(context.Background(), mintReq(tc.sec, tc.repo, tc.scope))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Mint = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if n := fg.Mints(); n != 0 {
		t.Errorf("fake issued %d tokens, want 0", n)
	}
}

func TestRevokeServerErrorIsAnError(t *testing.T) {
	fg := fakegithub.New(t)
	b := githubapp.New(nil)
	sec := appSecret(fg, fg.KeyPEM)
	cred, err := b.Mint(context.Background(), mintReq(sec, "acme/widgets", nil))
	if err != nil {
		t.Fatal(err)
	}
	fg.FailDeletes(1)
	err = b.Revoke(context.Background(), secrets.RevokeRequest{Secret: sec, Handle: cred.Handle})
	if err == nil || strings.Contains(err.Error(), cred.Handle) {
		t.Errorf("Revoke during a 503 = %v, want an error without the token", err)
	}
	if len(fg.LiveTokens()) != 1 {
		t.Errorf("token should still be live after the failed revoke")
	}
}

func TestAppJWTClaims(t *testing.T) {
	fg := fakegithub.New(t)
	now := time.Now()
	s, err := githubapp.AppJWT(fg.Key, "4242", now)
	if err != nil {
		t.Fatal(err)
	}
	if parts := strings.Split(s, "."); len(parts) != 3 {
		t.Fatalf("AppJWT = %q, want a compact JWS", s)
	}
	// An app JWT issued 20 minutes ago is expired: the fake must refuse it.
	old, err := githubapp.AppJWT(fg.Key, "4242", now.Add(-20*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		jwt  string
		want int
	}{{s, http.StatusCreated}, {old, http.StatusUnauthorized}} {
		req, err := http.NewRequest(http.MethodPost, fg.URL+"/app/installations/100/access_tokens", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tc.jwt)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("POST access_tokens with JWT = %d, want %d", resp.StatusCode, tc.want)
		}
	}
}
