package gitlab

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// RunnerConfig is one [[runners]] entry of config.toml, in gitlab-runner's
// shape. Executor-specific sections ([runners.docker]) belong to the
// runner's own config type that embeds this one.
type RunnerConfig struct {
	Name               string    `toml:"name"`
	URL                string    `toml:"url"`
	ID                 int64     `toml:"id"`
	Token              string    `toml:"token"`
	TokenObtainedAt    time.Time `toml:"token_obtained_at,omitzero"`
	TokenExpiresAt     time.Time `toml:"token_expires_at,omitzero"`
	Executor           string    `toml:"executor"`
	Limit              int       `toml:"limit"`               // concurrent jobs of this runner; 0 = no own limit
	RequestConcurrency int       `toml:"request_concurrency"` // parallel job requests; 0 = 1
	OutputLimit        int       `toml:"output_limit"`        // job log kept and sent, KiB; 0 = 4096
}

// String shows the entry without its token.
func (r RunnerConfig) String() string {
	return fmt.Sprintf("runner %q (id %d, %s, executor %s, token redacted)", r.Name, r.ID, r.URL, r.Executor)
}

// GoString is String: %#v must not leak the token either.
func (r RunnerConfig) GoString() string { return r.String() }

// Validate returns every problem with the entry, each naming its key under
// prefix key (e.g. "runners[0]").
func (r RunnerConfig) Validate(key string) []error {
	var errs []error
	add := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", key, field, fmt.Sprintf(format, a...)))
	}
	if strings.TrimSpace(r.URL) == "" {
		add("url", "required (e.g. https://gitlab.example.com)")
	} else if u, err := url.Parse(r.URL); err != nil {
		add("url", "not a URL: %v", err)
	} else {
		switch {
		case u.Scheme != "https" && u.Scheme != "http":
			add("url", "scheme must be https (or http)")
		case u.Host == "":
			add("url", "no host")
		case u.User != nil:
			add("url", "must not contain credentials")
		case u.RawQuery != "" || u.Fragment != "":
			add("url", "must not contain a query or fragment")
		}
	}
	switch {
	case r.Token == "":
		add("token", "required: run `airlock register` or paste the runner's glrt- token")
	case strings.TrimSpace(r.Token) != r.Token || strings.ContainsAny(r.Token, " \t\r\n"):
		add("token", "contains white space")
	}
	if !r.TokenExpiresAt.IsZero() && !r.TokenObtainedAt.IsZero() && !r.TokenExpiresAt.After(r.TokenObtainedAt) {
		add("token_expires_at", "must be after token_obtained_at")
	}
	switch r.Executor {
	case "", "docker", "containerd":
	default:
		add("executor", "%q: must be docker or containerd", r.Executor)
	}
	if r.OutputLimit < 0 {
		add("output_limit", "must not be negative (KiB; 0 means 4096)")
	}
	if r.Limit < 0 {
		add("limit", "must not be negative")
	}
	if r.RequestConcurrency < 0 {
		add("request_concurrency", "must not be negative")
	}
	if r.ID < 0 {
		add("id", "must not be negative")
	}
	return errs
}

// TokenRotationDue reports whether the token has used 75% of its lifetime
// and should be rotated with ResetToken.
func (r RunnerConfig) TokenRotationDue(now time.Time) bool {
	if r.TokenExpiresAt.IsZero() {
		return false
	}
	if r.TokenObtainedAt.IsZero() || !r.TokenExpiresAt.After(r.TokenObtainedAt) {
		return !now.Before(r.TokenExpiresAt.Add(-time.Hour))
	}
	life := r.TokenExpiresAt.Sub(r.TokenObtainedAt)
	return !now.Before(r.TokenObtainedAt.Add(life * 3 / 4))
}
