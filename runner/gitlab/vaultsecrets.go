package gitlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// GitLab CI secrets: resolved on the host from HashiCorp Vault with the
// job's id_tokens JWT (research §9), before anything of the job runs.

// vaultSecret is one entry of the payload's secrets map.
type vaultSecret struct {
	Vault *struct {
		Server struct {
			URL       string `json:"url"`
			Namespace string `json:"namespace"`
			Auth      struct {
				Name string            `json:"name"`
				Path string            `json:"path"`
				Data map[string]string `json:"data"`
			} `json:"auth"`
		} `json:"server"`
		Engine struct {
			Name string `json:"name"`
			Path string `json:"path"`
		} `json:"engine"`
		Path  string `json:"path"`
		Field string `json:"field"`
	} `json:"vault"`
	File *bool `json:"file"`
}

// parseSecrets decodes the payload's secrets, refusing providers and
// engines Airlock does not resolve, naming them.
func (r *JobResponse) parseSecrets() (map[string]vaultSecret, []error) {
	out := map[string]vaultSecret{}
	var errs []error
	names := make([]string, 0, len(r.Secrets))
	for k := range r.Secrets {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		raw := r.Secrets[name]
		if !job.ValidVarName(name) {
			errs = append(errs, fmt.Errorf("secrets: %q is not a valid variable name", truncate(name)))
			continue
		}
		var providers map[string]json.RawMessage
		if err := json.Unmarshal(raw, &providers); err != nil {
			errs = append(errs, fmt.Errorf("secrets.%s: not an object", name))
			continue
		}
		for p := range providers {
			if p != "vault" && p != "file" {
				errs = append(errs, fmt.Errorf("secrets.%s: the %s provider is not supported by Airlock (only vault)", name, truncate(p)))
			}
		}
		var s vaultSecret
		if err := json.Unmarshal(raw, &s); err != nil || s.Vault == nil {
			if _, ok := providers["vault"]; ok {
				errs = append(errs, fmt.Errorf("secrets.%s.vault: not a valid Vault secret", name))
			}
			continue
		}
		switch s.Vault.Engine.Name {
		case "", "kv-v2", "kv-v1", "generic":
		default:
			errs = append(errs, fmt.Errorf("secrets.%s.vault.engine %q is not supported by Airlock (kv-v2, kv-v1)", name, truncate(s.Vault.Engine.Name)))
		}
		if a := s.Vault.Server.Auth.Name; a != "" && a != "jwt" {
			errs = append(errs, fmt.Errorf("secrets.%s.vault.server.auth %q is not supported by Airlock (jwt)", name, truncate(a)))
		}
		out[name] = s
	}
	return out, errs
}

// Reasons of a failed secrets resolution, as gitlab-runner maps them.
const (
	ReasonConfiguration      FailureReason = "runner_configuration_error"
	ReasonExternalDependency FailureReason = "runner_external_dependency_failure"
)

// vaultError maps a Vault API failure to GitLab's failure reasons: 4xx is
// the job's or Vault's configuration, 5xx Vault's failure, anything else
// (network, timeout) the runner's.
func vaultError(status int, err error) error {
	reason := ReasonRunnerSystemFailure
	switch {
	case status >= 400 && status < 500 && status != http.StatusTooManyRequests:
		reason = ReasonConfiguration
	case status >= 500:
		reason = ReasonExternalDependency
	}
	return &job.ReasonError{Reason: job.FailureReason(reason), Err: err}
}

// SecretsOptions configure the resolution of GitLab secrets.
type SecretsOptions struct {
	// VaultServers are the Vault URLs (scheme://host[:port]) the runner
	// host may contact for a job's secrets; a job naming another one is
	// refused (the payload's VAULT_SERVER_URL is the project's to set,
	// and the host must not dial wherever a project says).
	VaultServers []string
	HTTPClient   *http.Client
	// JobLog, if set, is the job's log: a retry is said there.
	JobLog io.Writer
}

// vaultLogin is one Vault login of the job, revoked when it ends.
type vaultLogin struct {
	server, namespace, token, accessor string
}

// secretsRetryWait is the pause between two attempts of
// SECRETS_RETRIEVAL_ATTEMPTS.
const secretsRetryWait = time.Second

// ResolveSecrets resolves every secret of the payload: login at the auth
// path with {jwt, role}, read the KV v2 (or v1) path and field, and return
// each as a masked variable (a file variable unless file: false). revoke
// revokes every login token. Errors are *job.ReasonError with GitLab's
// reasons; messages never hold a value or a token.
//
// SECRETS_RETRIEVAL_ATTEMPTS (default 1) tries the whole resolution again
// after a failure Vault or the network may get over (5xx, 429, no
// answer); a refusal (4xx, a missing field, a server this runner may not
// contact) fails at once. The logins of a failed attempt are revoked
// before the next one; those that could not be are revoked with the rest
// by revoke.
func (p *Pipeline) ResolveSecrets(ctx context.Context, o SecretsOptions) (vars []job.Variable, reads []job.SecretRead, revoke func(context.Context) error, err error) {
	attempts := p.resp.attempts("SECRETS_RETRIEVAL_ATTEMPTS", 1)
	var leftover []func(context.Context) error
	for i := 1; ; i++ {
		vars, reads, revoke, err = p.resolveSecretsOnce(ctx, o)
		if err == nil || i >= attempts || ctx.Err() != nil || !retryableSecretsError(err) {
			break
		}
		p.o.Log.Warn("resolving secrets failed; retrying", "job", p.resp.ID, "attempt", i+1, "of", attempts, "error", err)
		if o.JobLog != nil {
			fmt.Fprintf(o.JobLog, "WARNING: Resolving secrets failed: %v\nRetrying (attempt %d of %d, SECRETS_RETRIEVAL_ATTEMPTS)\n", err, i+1, attempts)
		}
		if revoke != nil {
			if rerr := revoke(ctx); rerr != nil {
				leftover = append(leftover, revoke)
			}
		}
		if serr := p.sleep(ctx, secretsRetryWait); serr != nil {
			err = errors.Join(err, serr)
			revoke = nil
			break
		}
	}
	if len(leftover) == 0 {
		return vars, reads, revoke, err
	}
	if revoke != nil {
		leftover = append(leftover, revoke)
	}
	return vars, reads, func(ctx context.Context) error {
		var errs []error
		for _, r := range leftover {
			errs = append(errs, r(ctx))
		}
		return errors.Join(errs...)
	}, err
}

// retryableSecretsError reports whether a failed resolution may succeed
// when tried again: not when Vault or this runner refused it.
func retryableSecretsError(err error) bool {
	var re *job.ReasonError
	return !errors.As(err, &re) || re.Reason != job.FailureReason(ReasonConfiguration)
}

func (p *Pipeline) resolveSecretsOnce(ctx context.Context, o SecretsOptions) (vars []job.Variable, reads []job.SecretRead, revoke func(context.Context) error, err error) {
	secrets, errs := p.resp.parseSecrets()
	if len(errs) > 0 {
		return nil, nil, nil, &job.ReasonError{Reason: job.FailureReason(ReasonConfiguration), Err: errors.Join(errs...)}
	}
	hc := o.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: time.Minute}
	}
	logins := map[string]*vaultLogin{}
	revoke = func(ctx context.Context) error {
		var errs []error
		for _, l := range logins {
			if _, err := vaultCall(ctx, hc, http.MethodPost, l.server+"/v1/auth/token/revoke-self", l.namespace, l.token, nil); err != nil {
				errs = append(errs, fmt.Errorf("revoking the Vault login of job %d: %w", p.resp.ID, err))
			}
		}
		return errors.Join(errs...)
	}
	names := make([]string, 0, len(secrets))
	for k := range secrets {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		s := secrets[name]
		v := s.Vault
		server := strings.TrimRight(p.expand(v.Server.URL), "/")
		if !allowedServer(server, o.VaultServers) {
			return nil, nil, revoke, &job.ReasonError{Reason: job.FailureReason(ReasonConfiguration),
				Err: fmt.Errorf("secrets.%s: Vault server %q is not one this runner may contact ([gitlab_secrets] vault_servers)", name, server)}
		}
		ns := p.expand(v.Server.Namespace)
		authPath := strings.Trim(p.expand(v.Server.Auth.Path), "/")
		if authPath == "" {
			authPath = "jwt"
		}
		key := server + "\x00" + ns + "\x00" + authPath + "\x00" + p.expand(v.Server.Auth.Data["role"]) + "\x00" + p.expand(v.Server.Auth.Data["jwt"])
		l := logins[key]
		if l == nil {
			body := map[string]string{"jwt": p.expand(v.Server.Auth.Data["jwt"])}
			if role := p.expand(v.Server.Auth.Data["role"]); role != "" {
				body["role"] = role
			}
			for k := range v.Server.Auth.Data {
				if k != "jwt" && k != "role" {
					return nil, nil, revoke, &job.ReasonError{Reason: job.FailureReason(ReasonConfiguration),
						Err: fmt.Errorf("secrets.%s: auth data %q is not supported (jwt and role only)", name, truncate(k))}
				}
			}
			if body["jwt"] == "" {
				return nil, nil, revoke, &job.ReasonError{Reason: job.FailureReason(ReasonConfiguration),
					Err: fmt.Errorf("secrets.%s: no JWT (declare id_tokens and point the secret's token: at one)", name)}
			}
			resp, err := vaultCall(ctx, hc, http.MethodPost, server+"/v1/auth/"+authPath+"/login", ns, "", body)
			if err != nil {
				return nil, nil, revoke, fmt.Errorf("secrets.%s: logging in to Vault at auth/%s: %w", name, authPath, err)
			}
			var auth struct {
				Auth struct {
					ClientToken string `json:"client_token"`
					Accessor    string `json:"accessor"`
				} `json:"auth"`
			}
			if json.Unmarshal(resp, &auth) != nil || auth.Auth.ClientToken == "" {
				return nil, nil, revoke, vaultError(0, fmt.Errorf("secrets.%s: Vault's login answer has no token", name))
			}
			l = &vaultLogin{server: server, namespace: ns, token: auth.Auth.ClientToken, accessor: auth.Auth.Accessor}
			logins[key] = l
		}
		engine := strings.Trim(p.expand(v.Engine.Path), "/")
		if engine == "" {
			engine = "secret"
		}
		path := strings.Trim(p.expand(v.Path), "/")
		field := p.expand(v.Field)
		readURL := server + "/v1/" + engine + "/data/" + path
		kv1 := v.Engine.Name == "kv-v1" || v.Engine.Name == "generic"
		if kv1 {
			readURL = server + "/v1/" + engine + "/" + path
		}
		resp, err := vaultCall(ctx, hc, http.MethodGet, readURL, ns, l.token, nil)
		if err != nil {
			return nil, nil, revoke, fmt.Errorf("secrets.%s: reading %s/%s from Vault: %w", name, engine, path, err)
		}
		var doc struct {
			Data map[string]any `json:"data"`
		}
		_ = json.Unmarshal(resp, &doc)
		data := doc.Data
		if !kv1 {
			inner, _ := data["data"].(map[string]any)
			data = inner
		}
		val, ok := data[field]
		if !ok || val == nil {
			return nil, nil, revoke, &job.ReasonError{Reason: job.FailureReason(ReasonConfiguration),
				Err: fmt.Errorf("secret not found: %s (field %q of %s/%s)", name, field, engine, path)}
		}
		str, isStr := val.(string)
		if !isStr {
			str = fmt.Sprintf("%v", val)
		}
		file := s.File == nil || *s.File
		vars = append(vars, job.Variable{Key: name, Value: str, Masked: true, File: file, Raw: true})
		reads = append(reads, job.SecretRead{Var: name, Source: "vault", Server: server, Path: engine + "/" + path, Field: field, Login: l.accessor, File: file})
	}
	return vars, reads, revoke, nil
}

func allowedServer(server string, allowed []string) bool {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return false
	}
	for _, a := range allowed {
		if strings.EqualFold(strings.TrimRight(a, "/"), u.Scheme+"://"+u.Host) {
			return true
		}
	}
	return false
}

// vaultCall makes one Vault API call; a non-2xx answer is a ReasonError
// by its status. The token is sent in X-Vault-Token only.
func vaultCall(ctx context.Context, hc *http.Client, method, target, namespace, token string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, vaultError(0, fmt.Errorf("building the Vault request: %w", err))
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	if namespace != "" {
		req.Header.Set("X-Vault-Namespace", namespace)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		// url.Error names the URL, which holds no secret here.
		return nil, vaultError(0, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, vaultError(0, fmt.Errorf("reading Vault's answer: %w", err))
	}
	if resp.StatusCode/100 != 2 {
		var ve struct {
			Errors []string `json:"errors"`
		}
		_ = json.Unmarshal(data, &ve)
		msg := strings.Join(ve.Errors, "; ")
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return nil, vaultError(resp.StatusCode, fmt.Errorf("vault answered %d %s (%s)", resp.StatusCode, http.StatusText(resp.StatusCode), msg))
	}
	return data, nil
}
