// Package vault is the broker backend for HashiCorp Vault (and OpenBao).
//
// A secret's params choose the mode:
//   - token (default): mint a child *service* token per job (POST
//     auth/token/create) with the grant scope's policies, ttl and an
//     explicit_max_ttl of job timeout + slack, metadata {job, repo, ref,
//     grant}; the handle is the token's accessor, revoked with
//     auth/token/revoke-accessor.
//   - dynamic: read a dynamic secret path (database/creds/role, ...), or
//     with the write param write to it (pki/issue/role with the role's
//     generate_lease on); the handle is the lease id, revoked with
//     sys/leases/revoke.
//   - kv: read a KV v2 value (static; nothing to revoke).
//
// The runner authenticates with the secret's value: a Vault token, or,
// when the role_id param is set, an AppRole secret_id (login per call).
// With AppRole, child tokens die with their login token: the role's
// token_ttl must exceed the longest job.
package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/airlock-ci/airlock/secrets"
)

// Param names of a vault secret.
const (
	ParamAddress      = "address"       // required: https://vault.example.test:8200
	ParamMode         = "mode"          // token (default) | dynamic | kv
	ParamPath         = "path"          // dynamic: secret path; kv: path under the mount
	ParamMount        = "mount"         // kv: KV v2 mount (default "secret")
	ParamField        = "field"         // dynamic/kv: the field delivered (default: the only field, else JSON of all)
	ParamRoleID       = "role_id"       // AppRole login; the secret's value is then the secret_id
	ParamAppRoleMount = "approle_mount" // default "approle"
	ParamNamespace    = "namespace"     // Vault Enterprise namespace
	ParamWrite        = "write"         // dynamic: a JSON object of (non-secret) request fields; the path is written instead of read
)

// Modes.
const (
	ModeToken   = "token"
	ModeDynamic = "dynamic"
	ModeKV      = "kv"
)

// Scope keys of a vault grant.
const (
	ScopePolicies        = "policies"          // token mode, required: comma-separated policies
	ScopeNoDefaultPolicy = "no_default_policy" // token mode: "true" to omit the default policy
	ScopeNumUses         = "num_uses"          // token mode: limit uses
)

// Handle prefixes.
const (
	handleAccessor = "accessor:"
	handleLease    = "lease:"
)

// Backend is the Vault backend. The zero value is not usable; use New.
type Backend struct {
	timeout time.Duration

	mu      sync.Mutex
	clients map[string]*http.Client // by address: one pooled transport each
}

// New returns a Vault backend; timeout bounds each HTTP request (default 30s).
func New(timeout time.Duration) *Backend {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &Backend{timeout: timeout, clients: map[string]*http.Client{}}
}

var _ secrets.Backend = (*Backend)(nil)

// ValidateSecret checks a vault secret's params.
func (b *Backend) ValidateSecret(sec secrets.Secret) error {
	p := sec.Params
	var errs []error
	if u, err := url.Parse(p[ParamAddress]); p[ParamAddress] == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, fmt.Errorf("%s %q: must be an http(s) URL of the Vault server", ParamAddress, p[ParamAddress]))
	}
	switch p[ParamMode] {
	case "", ModeToken:
	case ModeDynamic, ModeKV:
		if p[ParamPath] == "" {
			errs = append(errs, fmt.Errorf("%s: required in %s mode", ParamPath, p[ParamMode]))
		}
	default:
		errs = append(errs, fmt.Errorf("%s %q: must be token, dynamic or kv", ParamMode, p[ParamMode]))
	}
	if w, ok := p[ParamWrite]; ok {
		var body map[string]any
		if p[ParamMode] != ModeDynamic {
			errs = append(errs, fmt.Errorf("%s: only dynamic mode writes", ParamWrite))
		} else if err := json.Unmarshal([]byte(w), &body); err != nil {
			errs = append(errs, fmt.Errorf("%s: must be a JSON object: %w", ParamWrite, err))
		}
	}
	for k := range p {
		switch k {
		case ParamAddress, ParamMode, ParamPath, ParamMount, ParamField, ParamRoleID, ParamAppRoleMount, ParamNamespace, ParamWrite:
		default:
			errs = append(errs, fmt.Errorf("%s: unknown vault parameter", k))
		}
	}
	return errors.Join(errs...)
}

func (b *Backend) httpClient(address string) *http.Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.clients[address]
	if !ok {
		c = api.DefaultConfig().HttpClient
		b.clients[address] = c
	}
	return c
}

// client returns an API client authenticated for sec.
func (b *Backend) client(ctx context.Context, sec secrets.Secret) (*api.Client, error) {
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("configuring vault client: %w", cfg.Error)
	}
	cfg.Address = sec.Params[ParamAddress]
	cfg.HttpClient = b.httpClient(cfg.Address)
	cfg.MaxRetries = 0 // the broker retries, with back-off
	cfg.Timeout = b.timeout
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating vault client for %s: %w", cfg.Address, err)
	}
	c.ClearNamespace()
	if ns := sec.Params[ParamNamespace]; ns != "" {
		c.SetNamespace(ns)
	}
	roleID := sec.Params[ParamRoleID]
	if roleID == "" {
		c.SetToken(string(sec.Value))
		return c, nil
	}
	c.ClearToken()
	mount := sec.Params[ParamAppRoleMount]
	if mount == "" {
		mount = "approle"
	}
	resp, err := c.Logical().WriteWithContext(ctx, "auth/"+strings.Trim(mount, "/")+"/login",
		map[string]any{"role_id": roleID, "secret_id": string(sec.Value)})
	if err != nil {
		return nil, fmt.Errorf("logging in to vault with approle %s: %w", roleID, err)
	}
	if resp == nil || resp.Auth == nil || resp.Auth.ClientToken == "" {
		return nil, fmt.Errorf("logging in to vault with approle %s: no token in the answer", roleID)
	}
	c.SetToken(resp.Auth.ClientToken)
	return c, nil
}

func secondsOf(d time.Duration) string { return fmt.Sprintf("%ds", int64(d/time.Second)) }

// Mint mints a credential for the job (see the package comment).
func (b *Backend) Mint(ctx context.Context, req secrets.MintRequest) (secrets.Credential, error) {
	c, err := b.client(ctx, req.Secret)
	if err != nil {
		return secrets.Credential{}, err
	}
	switch req.Secret.Params[ParamMode] {
	case "", ModeToken:
		return b.mintToken(ctx, c, req)
	case ModeDynamic:
		return b.mintDynamic(ctx, c, req)
	case ModeKV:
		return b.readKV(ctx, c, req)
	default:
		return secrets.Credential{}, fmt.Errorf("vault mode %q: must be token, dynamic or kv", req.Secret.Params[ParamMode])
	}
}

func (b *Backend) mintToken(ctx context.Context, c *api.Client, req secrets.MintRequest) (secrets.Credential, error) {
	var policies []string
	for _, p := range strings.Split(req.Grant.Scope[ScopePolicies], ",") {
		if p = strings.TrimSpace(p); p != "" {
			policies = append(policies, p)
		}
	}
	if len(policies) == 0 {
		return secrets.Credential{}, fmt.Errorf("grant %s: scope %s is required for a vault token (otherwise the child inherits every policy of the runner's token)", req.Grant.ID, ScopePolicies)
	}
	renewable := false
	tcr := &api.TokenCreateRequest{
		Policies:        policies,
		TTL:             secondsOf(req.TTL),
		ExplicitMaxTTL:  secondsOf(req.MaxTTL),
		Metadata:        map[string]string{"job": req.Job.JobID, "repo": req.Job.Repo, "ref": req.Job.Ref, "grant": req.Grant.ID, "issuer": "airlock"},
		DisplayName:     "airlock-" + req.Job.JobID,
		Renewable:       &renewable,
		Type:            "service", // batch tokens have no accessor and cannot be revoked
		NoDefaultPolicy: req.Grant.Scope[ScopeNoDefaultPolicy] == "true",
	}
	if n := req.Grant.Scope[ScopeNumUses]; n != "" {
		if _, err := fmt.Sscanf(n, "%d", &tcr.NumUses); err != nil {
			return secrets.Credential{}, fmt.Errorf("grant %s: scope %s %q: not a number", req.Grant.ID, ScopeNumUses, n)
		}
	}
	s, err := c.Auth().Token().CreateWithContext(ctx, tcr)
	if err != nil {
		return secrets.Credential{}, fmt.Errorf("creating vault child token: %w", err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" || s.Auth.Accessor == "" {
		return secrets.Credential{}, errors.New("creating vault child token: answer has no token or accessor")
	}
	exp := time.Now().Add(time.Duration(s.Auth.LeaseDuration) * time.Second)
	return secrets.Credential{Value: []byte(s.Auth.ClientToken), Handle: handleAccessor + s.Auth.Accessor, Expires: exp}, nil
}

func pick(data map[string]any, field string) ([]byte, error) {
	if field == "" && len(data) == 1 {
		for k := range data {
			field = k
		}
	}
	if field == "" {
		return json.Marshal(data)
	}
	v, ok := data[field]
	if !ok {
		return nil, fmt.Errorf("field %q not in the secret", field)
	}
	if s, ok := v.(string); ok {
		return []byte(s), nil
	}
	return json.Marshal(v)
}

func (b *Backend) mintDynamic(ctx context.Context, c *api.Client, req secrets.MintRequest) (secrets.Credential, error) {
	path := strings.Trim(req.Secret.Params[ParamPath], "/")
	var s *api.Secret
	var err error
	if w, ok := req.Secret.Params[ParamWrite]; ok {
		var body map[string]any
		if err := json.Unmarshal([]byte(w), &body); err != nil {
			return secrets.Credential{}, fmt.Errorf("vault param %s: %w", ParamWrite, err)
		}
		s, err = c.Logical().WriteWithContext(ctx, path, body)
	} else {
		s, err = c.Logical().ReadWithContext(ctx, path)
	}
	if err != nil {
		return secrets.Credential{}, fmt.Errorf("reading vault dynamic secret %s: %w", path, err)
	}
	if s == nil {
		return secrets.Credential{}, fmt.Errorf("reading vault dynamic secret %s: not found", path)
	}
	handle := ""
	if s.LeaseID != "" {
		handle = handleLease + s.LeaseID
	}
	val, err := pick(s.Data, req.Secret.Params[ParamField])
	if err != nil {
		if handle != "" {
			err = errors.Join(err, c.Sys().RevokeWithContext(context.WithoutCancel(ctx), s.LeaseID))
		}
		return secrets.Credential{}, fmt.Errorf("reading vault dynamic secret %s: %w", path, err)
	}
	var exp time.Time
	if s.LeaseDuration > 0 {
		exp = time.Now().Add(time.Duration(s.LeaseDuration) * time.Second)
	}
	return secrets.Credential{Value: val, Handle: handle, Expires: exp}, nil
}

func (b *Backend) readKV(ctx context.Context, c *api.Client, req secrets.MintRequest) (secrets.Credential, error) {
	mount := req.Secret.Params[ParamMount]
	if mount == "" {
		mount = "secret"
	}
	path := req.Secret.Params[ParamPath]
	s, err := c.KVv2(mount).Get(ctx, path)
	if err != nil {
		return secrets.Credential{}, fmt.Errorf("reading vault kv %s/%s: %w", mount, path, err)
	}
	val, err := pick(s.Data, req.Secret.Params[ParamField])
	if err != nil {
		return secrets.Credential{}, fmt.Errorf("reading vault kv %s/%s: %w", mount, path, err)
	}
	return secrets.Credential{Value: val}, nil
}

// Revoke revokes a child token by accessor or a lease by id. A token or
// lease Vault no longer knows counts as revoked.
func (b *Backend) Revoke(ctx context.Context, req secrets.RevokeRequest) error {
	if req.Handle == "" {
		return nil
	}
	c, err := b.client(ctx, req.Secret)
	if err != nil {
		return err
	}
	switch {
	case strings.HasPrefix(req.Handle, handleAccessor):
		acc := strings.TrimPrefix(req.Handle, handleAccessor)
		err := c.Auth().Token().RevokeAccessorWithContext(ctx, acc)
		if err != nil && !gone(err) {
			return fmt.Errorf("revoking vault token by accessor %s: %w", acc, err)
		}
		return nil
	case strings.HasPrefix(req.Handle, handleLease):
		id := strings.TrimPrefix(req.Handle, handleLease)
		err := c.Sys().RevokeWithContext(ctx, id)
		if err != nil && !gone(err) {
			return fmt.Errorf("revoking vault lease %s: %w", id, err)
		}
		return nil
	}
	return errors.New("revoking vault credential: unknown handle kind")
}

// gone reports whether err says the token or lease does not exist any more.
func gone(err error) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest {
		return false
	}
	for _, e := range re.Errors {
		e = strings.ToLower(e)
		if strings.Contains(e, "invalid accessor") || strings.Contains(e, "invalid lease") || strings.Contains(e, "lease not found") {
			return true
		}
	}
	return false
}
