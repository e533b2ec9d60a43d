package config

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// GitHubRunner is one [[github]] entry of config.toml. The runner's
// private key and client id are not here: they are sealed in the state
// store (github.CredentialName; written by `airlock register github`).
type GitHubRunner struct {
	Name   string   `toml:"name"`
	URL    string   `toml:"url"` // https://github.com/ORG[/REPO]
	Labels []string `toml:"labels,omitempty"`
	// Limit is 0 or 1: GitHub gives a runner registration one job at a
	// time; register more runners for parallel jobs.
	Limit     int   `toml:"limit"`
	RunnerID  int64 `toml:"runner_id,omitempty"`
	Ephemeral bool  `toml:"ephemeral,omitempty"` // a JIT runner: one job, then GitHub deletes it
}

var ghNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Validate returns every problem with the entry, each naming its key under
// prefix key (e.g. "github[0]").
func (r GitHubRunner) Validate(key string) []error {
	var errs []error
	add := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", key, field, fmt.Sprintf(format, a...)))
	}
	if !ghNameRE.MatchString(r.Name) {
		add("name", "%q: 1-64 letters, digits, '.', '_' or '-'", r.Name)
	}
	u, err := url.Parse(r.URL)
	parts := []string{}
	if err == nil {
		parts = strings.Split(strings.Trim(u.Path, "/"), "/")
	}
	switch {
	case err != nil || u.User != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		add("url", "%q: want https://github.com/ORG or https://github.com/ORG/REPO", r.URL)
	case len(parts) < 1 || len(parts) > 2 || parts[0] == "" || u.RawQuery != "" || u.Fragment != "":
		add("url", "%q: want https://github.com/ORG or https://github.com/ORG/REPO", r.URL)
	}
	for i, l := range r.Labels {
		if strings.TrimSpace(l) == "" || strings.ContainsAny(l, ", \t\n") {
			add(fmt.Sprintf("labels[%d]", i), "%q: a label is one word", l)
		}
	}
	if r.Limit < 0 || r.Limit > 1 {
		add("limit", "%d: a GitHub runner runs one job at a time (0 or 1); register more runners for parallel jobs", r.Limit)
	}
	return errs
}
