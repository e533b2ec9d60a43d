package github

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// RegisterOptions are `airlock register github`'s inputs.
type RegisterOptions struct {
	URL       string // https://github.com/ORG[/REPO]
	Token     string // registration token (Settings > Actions > Runners > New)
	Name      string
	Labels    []string
	Group     string // runner group name ("" = the default group)
	Ephemeral bool
	Replace   bool // replace a runner of the same name
}

// Endpoints derives the REST API base and the runner scope path of a
// GitHub URL: github.com uses api.github.com, any other host HOST/api/v3.
func Endpoints(ghURL string) (api, scope string, err error) {
	u, err := url.Parse(strings.TrimRight(ghURL, "/"))
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", "", fmt.Errorf("GitHub URL %q: want https://github.com/ORG or https://github.com/ORG/REPO", ghURL)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	switch {
	case len(parts) == 2 && parts[0] == "enterprises":
		scope = "/enterprises/" + parts[1]
	case len(parts) == 1 && parts[0] != "":
		scope = "/orgs/" + parts[0]
	case len(parts) == 2:
		scope = "/repos/" + parts[0] + "/" + parts[1]
	default:
		return "", "", fmt.Errorf("GitHub URL %q: want https://github.com/ORG or https://github.com/ORG/REPO", ghURL)
	}
	host := strings.ToLower(u.Hostname())
	switch {
	case host == "github.com" || host == "www.github.com":
		api = "https://api.github.com"
	case strings.HasSuffix(host, ".ghe.com"):
		api = u.Scheme + "://api." + u.Host
	default:
		api = u.Scheme + "://" + u.Host + "/api/v3"
	}
	return api, scope, nil
}

type tenantCredential struct {
	URL       string `json:"url"`
	Token     string `json:"token"`
	UseV2Flow bool   `json:"use_v2_flow"`
}

// tenant exchanges a registration (or remove) token for the tenant
// credential (§1b step 2).
func tenant(ctx context.Context, hc *http.Client, api, ghURL, token, event string) (*tenantCredential, error) {
	var tc tenantCredential
	_, err := do(ctx, hc, request{op: "exchanging the " + event + " token", method: http.MethodPost,
		url: api + "/actions/runner-registration", auth: "RemoteAuth " + token,
		body: map[string]string{"url": ghURL, "runner_event": event}}, &tc)
	if err != nil {
		if st := StatusOf(err); st == http.StatusNotFound || st == http.StatusUnauthorized || st == http.StatusForbidden {
			return nil, fmt.Errorf("%w (the token is wrong, expired (they last an hour) or not for %s)", err, ghURL)
		}
		return nil, err
	}
	if tc.URL == "" || tc.Token == "" {
		return nil, fmt.Errorf("exchanging the %s token: the answer has no tenant URL or token", event)
	}
	return &tc, nil
}

func xmlPublicKey(k *rsa.PublicKey) string {
	return "<RSAKeyValue><Modulus>" + base64.StdEncoding.EncodeToString(k.N.Bytes()) + "</Modulus><Exponent>" +
		base64.StdEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()) + "</Exponent></RSAKeyValue>"
}

// Register registers a runner like config.sh --url --token: a 2048-bit key
// made here (only its public half is sent), the tenant credential, then
// the runner-admin flow or the classic agents flow, whichever GitHub asks
// for. The registration token is not kept.
func Register(ctx context.Context, hc *http.Client, o RegisterOptions) (*Registration, error) {
	if hc == nil {
		hc = &http.Client{Timeout: pollTimeout}
	}
	if o.Token == "" || o.Name == "" {
		return nil, errors.New("registering GitHub runner: token and name are required")
	}
	api, scope, err := Endpoints(o.URL)
	if err != nil {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, MinKeyBits)
	if err != nil {
		return nil, fmt.Errorf("registering GitHub runner: generating key: %w", err)
	}
	tc, err := tenant(ctx, hc, api, o.URL, o.Token, "register")
	if err != nil {
		return nil, fmt.Errorf("registering GitHub runner: %w", err)
	}
	var reg *Registration
	if tc.UseV2Flow {
		reg, err = registerRunnerAdmin(ctx, hc, api, scope, o, key)
	} else {
		reg, err = registerAgent(ctx, hc, tc, o, key)
	}
	if err != nil {
		return nil, fmt.Errorf("registering GitHub runner %q: %w", o.Name, err)
	}
	reg.GitHubURL, reg.Key, reg.Ephemeral = o.URL, key, o.Ephemeral
	if reg.ServerURL == "" {
		reg.ServerURL = tc.URL
	}
	return reg, reg.Validate()
}

type runnerGroup struct {
	ID       int64  `json:"id"`
	Name     string `json:"name"`
	Default  bool   `json:"default"`
	IsHosted bool   `json:"is_hosted"`
}

func registerRunnerAdmin(ctx context.Context, hc *http.Client, api, scope string, o RegisterOptions, key *rsa.PrivateKey) (*Registration, error) {
	auth := "RemoteAuth " + o.Token
	var groups struct {
		Groups []runnerGroup `json:"runner_groups"`
	}
	if _, err := do(ctx, hc, request{op: "listing runner groups", method: http.MethodGet, url: api + scope + "/actions/runner-groups", auth: auth}, &groups); err != nil {
		return nil, err
	}
	var group *runnerGroup
	for i, g := range groups.Groups {
		if g.IsHosted {
			continue
		}
		if (o.Group == "" && g.Default) || (o.Group != "" && strings.EqualFold(g.Name, o.Group)) {
			group = &groups.Groups[i]
			break
		}
	}
	if group == nil {
		if o.Group != "" {
			return nil, fmt.Errorf("no self-hosted runner group named %q", o.Group)
		}
		return nil, errors.New("no default self-hosted runner group")
	}
	var existing struct {
		Runners []struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
		} `json:"runners"`
	}
	if _, err := do(ctx, hc, request{op: "looking for a runner of the same name", method: http.MethodGet,
		url: api + scope + "/actions/runners?name=" + url.QueryEscape(o.Name), auth: auth}, &existing); err != nil {
		return nil, err
	}
	body := map[string]any{"url": o.URL, "group_id": group.ID, "name": o.Name, "version": RunnerVersion,
		"updates_disabled": true, "ephemeral": o.Ephemeral, "labels": labelsBody(o.Labels, "system"), "public_key": xmlPublicKey(&key.PublicKey)}
	for _, r := range existing.Runners {
		if r.Name == o.Name {
			if !o.Replace {
				return nil, fmt.Errorf("a runner named %q already exists (id %d): pick another --name or remove it", o.Name, r.ID)
			}
			body["runner_id"], body["replace"] = r.ID, true
		}
	}
	var ans struct {
		ID            int64  `json:"id"`
		Name          string `json:"name"`
		Authorization struct {
			AuthorizationURL       string `json:"authorization_url"`
			ServerURL              string `json:"server_url"`
			ClientID               string `json:"client_id"`
			LegacyAuthorizationURL string `json:"legacy_authorization_url"`
		} `json:"authorization"`
	}
	if _, err := do(ctx, hc, request{op: "registering the runner", method: http.MethodPost, url: api + "/actions/runners/register", auth: auth, body: body}, &ans); err != nil {
		return nil, err
	}
	a := ans.Authorization
	authURL := a.AuthorizationURL
	if a.LegacyAuthorizationURL != "" {
		authURL = a.LegacyAuthorizationURL
	}
	return &Registration{AgentID: ans.ID, AgentName: firstNonEmpty(ans.Name, o.Name), PoolID: group.ID,
		ServerURLV2: a.ServerURL, UseV2Flow: a.ServerURL != "", ClientID: a.ClientID, AuthorizationURL: authURL, RequireFIPS: true}, nil
}

func labelsBody(labels []string, systemType string) []map[string]string {
	out := []map[string]string{{"name": "self-hosted", "type": systemType}, {"name": "Linux", "type": systemType}, {"name": "X64", "type": systemType}}
	for _, l := range labels {
		if l = strings.TrimSpace(l); l != "" && !strings.EqualFold(l, "self-hosted") {
			out = append(out, map[string]string{"name": l, "type": "user"})
		}
	}
	return out
}

// property is a TaskAgent property: {"$type", "$value"}.
type property struct {
	Value any `json:"$value"`
}

func registerAgent(ctx context.Context, hc *http.Client, tc *tenantCredential, o RegisterOptions, key *rsa.PrivateKey) (*Registration, error) {
	auth := "Bearer " + tc.Token
	cd, err := resolve(tc.URL, "_apis/connectionData?connectOptions=1&lastChangeId=-1&lastChangeId64=-1")
	if err != nil {
		return nil, err
	}
	if _, err := do(ctx, hc, request{op: "reading the location service", method: http.MethodGet, url: cd, auth: auth}, nil); err != nil {
		return nil, err
	}
	poolsURL, _ := resolve(tc.URL, "_apis/distributedtask/pools")
	var pools struct {
		Value []struct {
			ID       int64  `json:"id"`
			Name     string `json:"name"`
			IsHosted bool   `json:"isHosted"`
		} `json:"value"`
	}
	if _, err := do(ctx, hc, request{op: "listing agent pools", method: http.MethodGet, url: poolsURL, auth: auth}, &pools); err != nil {
		return nil, err
	}
	var pool int64
	for _, p := range pools.Value {
		if !p.IsHosted && (o.Group == "" || strings.EqualFold(p.Name, o.Group)) {
			pool = p.ID
			break
		}
	}
	if pool == 0 {
		return nil, fmt.Errorf("no self-hosted agent pool %q", o.Group)
	}
	agentsURL, _ := resolve(tc.URL, "_apis/distributedtask/pools/"+strconv.FormatInt(pool, 10)+"/agents")
	body := map[string]any{"name": o.Name, "version": RunnerVersion, "osDescription": "Linux", "maxParallelism": 1,
		"ephemeral": o.Ephemeral, "disableUpdate": true, "labels": labelsBody(o.Labels, "system"),
		"authorization": map[string]any{"publicKey": map[string]string{
			"exponent": base64.StdEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes()),
			"modulus":  base64.StdEncoding.EncodeToString(key.N.Bytes())}}}
	var ans struct {
		ID            int64  `json:"id"`
		Name          string `json:"name"`
		Authorization struct {
			AuthorizationURL string `json:"authorizationUrl"`
			ClientID         string `json:"clientId"`
		} `json:"authorization"`
		Properties map[string]property `json:"properties"`
	}
	if _, err := do(ctx, hc, request{op: "adding the agent", method: http.MethodPost, url: agentsURL, auth: auth, body: body}, &ans); err != nil {
		return nil, err
	}
	reg := &Registration{AgentID: ans.ID, AgentName: firstNonEmpty(ans.Name, o.Name), PoolID: pool, ServerURL: tc.URL,
		ClientID: ans.Authorization.ClientID, AuthorizationURL: ans.Authorization.AuthorizationURL, RequireFIPS: true}
	for k, p := range ans.Properties {
		switch strings.ToLower(k) {
		case "serverurlv2":
			if s, ok := p.Value.(string); ok {
				reg.ServerURLV2 = s
			}
		case "usev2flow":
			reg.UseV2Flow, _ = p.Value.(bool)
		case "requirefipscryptography":
			if b, ok := p.Value.(bool); ok {
				reg.RequireFIPS = b
			}
		}
	}
	if reg.ServerURLV2 == "" {
		reg.UseV2Flow = false
	}
	return reg, nil
}

// Unregister removes the runner from GitHub with a remove token
// (config.sh remove): the runner-admin DELETE or the classic agents one.
func Unregister(ctx context.Context, hc *http.Client, reg *Registration, removeToken string) error {
	if hc == nil {
		hc = &http.Client{Timeout: pollTimeout}
	}
	api, scope, err := Endpoints(reg.GitHubURL)
	if err != nil {
		return err
	}
	tc, err := tenant(ctx, hc, api, reg.GitHubURL, removeToken, "remove")
	if err != nil {
		return fmt.Errorf("removing GitHub runner %q: %w", reg.AgentName, err)
	}
	var req request
	if tc.UseV2Flow {
		req = request{op: "removing the runner", method: http.MethodDelete, auth: "RemoteAuth " + removeToken,
			url: api + scope + "/actions/runners/" + strconv.FormatInt(reg.AgentID, 10)}
	} else {
		u, _ := resolve(tc.URL, fmt.Sprintf("_apis/distributedtask/pools/%d/agents/%d", reg.PoolID, reg.AgentID))
		req = request{op: "removing the agent", method: http.MethodDelete, auth: "Bearer " + tc.Token, url: u}
	}
	if _, err := do(ctx, hc, req, nil); err != nil && StatusOf(err) != http.StatusNotFound {
		return fmt.Errorf("removing GitHub runner %q: %w", reg.AgentName, err)
	}
	return nil
}

// Verify checks that GitHub still knows the registration: the OAuth
// exchange answers invalid_client (ErrRegistrationGone) for a deleted one.
func Verify(ctx context.Context, hc *http.Client, reg *Registration) error {
	if hc == nil {
		hc = &http.Client{Timeout: pollTimeout}
	}
	ts := &tokenSource{reg: reg, hc: hc, now: time.Now}
	_, err := ts.Token(ctx)
	return err
}
