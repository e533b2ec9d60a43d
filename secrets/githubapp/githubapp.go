// Package githubapp is the broker backend that mints GitHub App
// installation tokens scoped to the job's repository.
//
// Mint signs an app JWT (RS256, iat backdated 60 s, exp 9 min later, iss =
// app id) and calls POST /app/installations/{id}/access_tokens with
// repositories = [the job repository's name] and the grant scope as
// permissions. The token is its own revocation handle: DELETE
// /installation/token authenticated with the token (the broker keeps the
// handle encrypted). GitHub tokens live one hour and cannot be shortened;
// revocation at job end is what bounds them.
package githubapp

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/airlock-ci/airlock/secrets"
)

// Param names of a githubapp secret. The secret's value is the app's
// private key (PEM, PKCS#1 or PKCS#8).
const (
	ParamAppID          = "app_id"          // required: numeric app id (or client id)
	ParamInstallationID = "installation_id" // required
	ParamAPIURL         = "api_url"         // default https://api.github.com
	ParamOwner          = "owner"           // optional: the installation's account; jobs of other owners are refused
)

// DefaultAPIURL is GitHub.com's REST API.
const DefaultAPIURL = "https://api.github.com"

var validPermission = map[string]bool{"read": true, "write": true, "admin": true}

// Backend is the GitHub App backend.
type Backend struct {
	http *http.Client
}

var _ secrets.Backend = (*Backend)(nil)

// New returns a backend using client (nil: a client with a 30 s timeout).
func New(client *http.Client) *Backend {
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	return &Backend{http: client}
}

// ValidateSecret checks params, the private key and, for grants, nothing.
func (b *Backend) ValidateSecret(sec secrets.Secret) error {
	p := sec.Params
	var errs []error
	if p[ParamAppID] == "" {
		errs = append(errs, fmt.Errorf("%s: required", ParamAppID))
	}
	if _, err := strconv.ParseInt(p[ParamInstallationID], 10, 64); err != nil {
		errs = append(errs, fmt.Errorf("%s %q: must be a number", ParamInstallationID, p[ParamInstallationID]))
	}
	if api := p[ParamAPIURL]; api != "" {
		if u, err := url.Parse(api); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s %q: must be an http(s) URL", ParamAPIURL, api))
		}
	}
	for k := range p {
		switch k {
		case ParamAppID, ParamInstallationID, ParamAPIURL, ParamOwner:
		default:
			errs = append(errs, fmt.Errorf("%s: unknown githubapp parameter", k))
		}
	}
	if _, err := jwt.ParseRSAPrivateKeyFromPEM(sec.Value); err != nil {
		errs = append(errs, errors.New("value: not a PEM RSA private key (PKCS#1 or PKCS#8)"))
	}
	return errors.Join(errs...)
}

// ValidateScope checks a grant scope: GitHub permission names to read,
// write or admin.
func ValidateScope(scope map[string]string) error {
	var errs []error
	for k, v := range scope {
		if !validPermission[v] {
			errs = append(errs, fmt.Errorf("scope %s=%q: must be read, write or admin", k, v))
		}
	}
	return errors.Join(errs...)
}

func apiURL(sec secrets.Secret) string {
	if u := sec.Params[ParamAPIURL]; u != "" {
		return strings.TrimRight(u, "/")
	}
	return DefaultAPIURL
}

// AppJWT signs the app's JWT: iat now-60s, exp now+9m, iss app id.
func AppJWT(key *rsa.PrivateKey, appID string, now time.Time) (string, error) {
	claims := jwt.MapClaims{
		"iat": now.Add(-60 * time.Second).Unix(),
		"exp": now.Add(9 * time.Minute).Unix(),
		"iss": appID,
	}
	if n, err := strconv.ParseInt(appID, 10, 64); err == nil {
		claims["iss"] = n
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodRS256, claims).SignedString(key)
	if err != nil {
		return "", fmt.Errorf("signing app jwt: %w", err)
	}
	return s, nil
}

func (b *Backend) do(ctx context.Context, method, u, auth string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		buf, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	req.Header.Set("User-Agent", "airlock")
	req.Header.Set("Authorization", "Bearer "+auth)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return b.http.Do(req)
}

// apiError renders a GitHub error answer (its message, never the request).
func apiError(resp *http.Response) error {
	var e struct {
		Message string `json:"message"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
	if e.Message == "" {
		return fmt.Errorf("github answered %s", resp.Status)
	}
	return fmt.Errorf("github answered %s: %s", resp.Status, e.Message)
}

// Mint creates an installation token for the job's repository.
func (b *Backend) Mint(ctx context.Context, req secrets.MintRequest) (secrets.Credential, error) {
	sec := req.Secret
	owner, name, ok := strings.Cut(req.Job.Repo, "/")
	if !ok || name == "" || strings.Contains(name, "/") {
		return secrets.Credential{}, fmt.Errorf("minting github app token: repo %q is not owner/name", req.Job.Repo)
	}
	if want := sec.Params[ParamOwner]; want != "" && !strings.EqualFold(want, owner) {
		return secrets.Credential{}, fmt.Errorf("minting github app token: repo %q is not owned by the installation's account %q", req.Job.Repo, want)
	}
	if err := ValidateScope(req.Grant.Scope); err != nil {
		return secrets.Credential{}, fmt.Errorf("minting github app token for grant %s: %w", req.Grant.ID, err)
	}
	body := map[string]any{"repositories": []string{name}}
	if len(req.Grant.Scope) > 0 {
		body["permissions"] = req.Grant.Scope
	}
	tok, exp, err := b.InstallationToken(ctx, sec, body)
	if err != nil {
		return secrets.Credential{}, err
	}
	return secrets.Credential{Value: []byte(tok), Handle: tok, Expires: exp}, nil
}

// InstallationToken mints an installation token of the app a githubapp
// secret describes; body is the request's JSON (repositories,
// permissions), nil for the installation's whole grant.
func (b *Backend) InstallationToken(ctx context.Context, sec secrets.Secret, body map[string]any) (string, time.Time, error) {
	key, err := jwt.ParseRSAPrivateKeyFromPEM(sec.Value)
	if err != nil {
		return "", time.Time{}, errors.New("minting github app token: the secret's value is not a PEM RSA private key")
	}
	appJWT, err := AppJWT(key, sec.Params[ParamAppID], time.Now())
	if err != nil {
		return "", time.Time{}, err
	}
	if body == nil {
		body = map[string]any{}
	}
	u := apiURL(sec) + "/app/installations/" + url.PathEscape(sec.Params[ParamInstallationID]) + "/access_tokens"
	resp, err := b.do(ctx, http.MethodPost, u, appJWT, body)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("minting github app token: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", time.Time{}, fmt.Errorf("minting github app token for installation %s: %w", sec.Params[ParamInstallationID], apiError(resp))
	}
	var out struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil || out.Token == "" {
		return "", time.Time{}, fmt.Errorf("minting github app token: unreadable answer (%v)", err)
	}
	return out.Token, out.ExpiresAt, nil
}

// Revoke deletes the installation token. 401 means the token is already
// revoked or expired, which counts as success.
func (b *Backend) Revoke(ctx context.Context, req secrets.RevokeRequest) error {
	if req.Handle == "" {
		return nil
	}
	resp, err := b.do(ctx, http.MethodDelete, apiURL(req.Secret)+"/installation/token", req.Handle, nil)
	if err != nil {
		return fmt.Errorf("revoking github installation token: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusUnauthorized:
		return nil
	}
	return fmt.Errorf("revoking github installation token: %w", apiError(resp))
}
