package config

import (
	"fmt"
	"strings"
	"time"
)

// Autoscale is one [[autoscale]] entry: ephemeral GitHub runners made on
// demand, one JIT registration per queued job this host serves (see
// runner/github/autoscale). The credentials are secrets in the state store,
// named here: a GitHub App (`airlock secret set NAME --backend githubapp`)
// or a fine-grained token; and the webhook secret.
type Autoscale struct {
	Name string `toml:"name"`
	// URL is the scope: https://github.com/ORG or https://github.com/ORG/REPO.
	URL string `toml:"url"`
	// APIURL overrides the REST base URL derived from URL.
	APIURL string `toml:"api_url,omitempty"`
	// AppSecret names a githubapp secret (app id, installation id, PEM
	// key); TokenSecret a secret holding a token with "Self-hosted
	// runners: write" (and Actions: read for polling). One of the two.
	AppSecret   string `toml:"app_secret,omitempty"`
	TokenSecret string `toml:"token_secret,omitempty"`
	// RunnerGroupID is the runner group of the JIT runners (default 1).
	RunnerGroupID int64    `toml:"runner_group_id,omitempty"`
	Labels        []string `toml:"labels"`
	MaxRunners    int      `toml:"max_runners"`
	// WebhookSecret names the secret holding the webhook's HMAC key; the
	// endpoint is WebhookPath on listen_address.
	WebhookSecret string `toml:"webhook_secret,omitempty"`
	WebhookPath   string `toml:"webhook_path,omitempty"`
	// Repositories limits (and, without a webhook, polls) the
	// repositories served: "owner/name" or globs like "acme/*".
	Repositories      []string      `toml:"repositories,omitempty"`
	AllowForks        bool          `toml:"allow_forks,omitempty"`
	PollInterval      time.Duration `toml:"poll_interval,omitempty"`
	IdleTimeout       time.Duration `toml:"idle_timeout,omitempty"`
	ReconcileInterval time.Duration `toml:"reconcile_interval,omitempty"`
}

// Path is the webhook's path on listen_address.
func (a Autoscale) Path() string {
	if a.WebhookPath != "" {
		return a.WebhookPath
	}
	return "/github/webhook/" + a.Name
}

// Validate returns every problem of the entry, each naming its key under
// prefix key (e.g. "autoscale[0]"); listen is the agent's listen_address.
func (a Autoscale) Validate(key, listen string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", key, field, fmt.Sprintf(format, args...)))
	}
	if !ghNameRE.MatchString(a.Name) {
		add("name", "%q: 1-64 letters, digits, '.', '_' or '-'", a.Name)
	}
	gh := GitHubRunner{Name: "x", URL: a.URL}
	errs = append(errs, gh.Validate(key)...)
	if (a.AppSecret == "") == (a.TokenSecret == "") {
		add("app_secret", "set exactly one of app_secret (a GitHub App) and token_secret")
	}
	if len(a.Labels) == 0 {
		add("labels", "at least one label this host serves (jobs ask for it in runs-on)")
	}
	for i, l := range a.Labels {
		if strings.TrimSpace(l) == "" || strings.ContainsAny(l, ", \t\n") {
			add(fmt.Sprintf("labels[%d]", i), "%q: a label is one word", l)
		}
	}
	if a.MaxRunners < 1 {
		add("max_runners", "%d: at least 1", a.MaxRunners)
	}
	if a.WebhookSecret != "" && listen == "" {
		add("webhook_secret", "the webhook is served on listen_address, which is not set")
	}
	if a.WebhookSecret == "" && len(a.Repositories) == 0 && !strings.Contains(strings.Trim(strings.TrimPrefix(strings.TrimPrefix(a.URL, "https://"), "http://"), "/"), "/") {
		add("webhook_secret", "an organization scope needs a webhook, or repositories to poll")
	}
	if p := a.WebhookPath; p != "" && (!strings.HasPrefix(p, "/") || p == "/metrics") {
		add("webhook_path", "%q: an absolute path other than /metrics", p)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"poll_interval", a.PollInterval}, {"idle_timeout", a.IdleTimeout}, {"reconcile_interval", a.ReconcileInterval}} {
		if d.v < 0 {
			add(d.name, "must not be negative")
		}
	}
	return errs
}
