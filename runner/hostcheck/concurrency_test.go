package hostcheck

import (
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/gitlab"
)

func TestCheckConcurrency(t *testing.T) {
	cfgWith := func(concurrent int, runners []gitlab.RunnerConfig, github int) *config.Config {
		c := config.Defaults()
		c.Concurrent, c.Runners = concurrent, runners
		c.GitHub = make([]config.GitHubRunner, github)
		return c
	}
	tests := []struct {
		name   string
		cfg    *config.Config
		status Status
		detail string
	}{
		{"nothing configured", cfgWith(1, nil, 0), OK, "concurrent = 1; at most 0 job requests in flight (0 GitLab, 0 GitHub)"},
		{"one GitLab runner", cfgWith(1, []gitlab.RunnerConfig{{}}, 0), OK, "at most 1 job requests in flight (1 GitLab, 0 GitHub)"},
		{"GitLab and GitHub on one slot", cfgWith(1, []gitlab.RunnerConfig{{}}, 1), Warn, "at most 2 job requests in flight (1 GitLab, 1 GitHub): each holds a slot"},
		{"request_concurrency counts, capped by limit", cfgWith(3, []gitlab.RunnerConfig{{RequestConcurrency: 4, Limit: 2}, {RequestConcurrency: 2}}, 0), Warn,
			"at most 4 job requests in flight (4 GitLab, 0 GitHub)"},
		{"enough slots", cfgWith(4, []gitlab.RunnerConfig{{RequestConcurrency: 2}}, 2), OK, "at most 4 job requests in flight (2 GitLab, 2 GitHub)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := checkConcurrency(tc.cfg)
			if r.Status != tc.status || !strings.Contains(r.Detail, tc.detail) {
				t.Errorf("checkConcurrency = %v %q, want %v containing %q", r.Status, r.Detail, tc.status, tc.detail)
			}
			if (r.Status == Warn) != strings.HasPrefix(r.Fix, "set concurrent = ") {
				t.Errorf("fix %q for status %v", r.Fix, r.Status)
			}
		})
	}
}
