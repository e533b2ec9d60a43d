package gitlab

import (
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestRunnerConfigTOML(t *testing.T) {
	const in = `
[[runners]]
name = "build-1"
url = "https://gitlab.test"
id = 12
token = "glrt-abc"
token_obtained_at = 2026-01-01T00:00:00Z
token_expires_at = 2026-04-01T00:00:00Z
executor = "docker"
limit = 4
request_concurrency = 2
`
	var cfg struct {
		Runners []RunnerConfig `toml:"runners"`
	}
	if _, err := toml.Decode(in, &cfg); err != nil {
		t.Fatalf("decoding: %v", err)
	}
	r := cfg.Runners[0]
	if r.Name != "build-1" || r.ID != 12 || r.Limit != 4 || r.RequestConcurrency != 2 || r.TokenExpiresAt.Month() != time.April {
		t.Errorf("decoded %+v", r)
	}
	if errs := r.Validate("runners[0]"); len(errs) != 0 {
		t.Errorf("Validate() = %v, want none", errs)
	}
	if !r.TokenRotationDue(time.Date(2026, 3, 20, 0, 0, 0, 0, time.UTC)) {
		t.Error("TokenRotationDue(after 75%) = false, want true")
	}
	if r.TokenRotationDue(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Error("TokenRotationDue(early) = true, want false")
	}
}

func TestRunnerConfigValidate(t *testing.T) {
	good := RunnerConfig{URL: "https://gitlab.test", Token: "glrt-x", Executor: "docker"}
	tests := []struct {
		name   string
		mutate func(*RunnerConfig)
		want   string
	}{
		{"no url", func(r *RunnerConfig) { r.URL = "" }, "runners[1].url: required"},
		{"bad scheme", func(r *RunnerConfig) { r.URL = "ftp://gitlab.test" }, "runners[1].url: scheme"},
		{"credentials in url", func(r *RunnerConfig) { r.URL = "https://u:p@gitlab.test" }, "runners[1].url: must not contain credentials"},
		{"no token", func(r *RunnerConfig) { r.Token = "" }, "runners[1].token: required"},
		{"token with space", func(r *RunnerConfig) { r.Token = "glrt- x" }, "runners[1].token: contains white space"},
		{"executor", func(r *RunnerConfig) { r.Executor = "shell" }, "runners[1].executor"},
		{"limit", func(r *RunnerConfig) { r.Limit = -1 }, "runners[1].limit"},
		{"request_concurrency", func(r *RunnerConfig) { r.RequestConcurrency = -2 }, "runners[1].request_concurrency"},
		{"expiry before obtained", func(r *RunnerConfig) {
			r.TokenObtainedAt = time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
			r.TokenExpiresAt = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		}, "runners[1].token_expires_at"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			tc.mutate(&r)
			errs := r.Validate("runners[1]")
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
				t.Errorf("Validate() = %v, want one error containing %q", errs, tc.want)
			}
		})
	}
	bad := RunnerConfig{Limit: -1}
	if errs := bad.Validate("runners[0]"); len(errs) < 3 {
		t.Errorf("Validate() of an empty entry = %v, want every problem at once", errs)
	}
}
