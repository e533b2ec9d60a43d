package github

import (
	"crypto/sha256"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner"
)

// GITHUB_TOKEN reaches the job only as its surrogate, wherever the
// workflow puts it (secrets.GITHUB_TOKEN, github.token; job env, step
// env): bound to the server's hosts (github.com's API, uploads,
// registries; a GitHub Enterprise Server's subdomains) and masked.
func TestGitHubTokenSurrogate(t *testing.T) {
	const real = "ghs_testtoken0123456789abcdef"
	for _, tc := range []struct {
		server, api string
		hosts       []string
	}{
		{"https://github.com", "https://api.github.com", []string{"github.com", "api.github.com", "uploads.github.com", "raw.githubusercontent.com", "ghcr.io", "*.pkg.github.com", "models.github.ai"}},
		{"https://GHE.example.test", "https://ghe.example.test/api/v3", []string{"ghe.example.test", "*.ghe.example.test"}},
		{"https://10.0.0.7", "https://10.0.0.7/api/v3", nil}, // no name to bind: the job holds the token
		{"", "", nil},
	} {
		m := testMessage(testenv.TestImage, runStep("s", "S", lit("true")))
		m.ContextData["github"] = Dict("repository", "acme/app", "server_url", tc.server, "api_url", tc.api)
		m.EnvironmentVariables = []*TemplateToken{mapping("FROM_SECRETS", exprTok("secrets.GITHUB_TOKEN"), "FROM_GITHUB", exprTok("github.token"))}
		j, err := m.ToJob(ConvertOptions{IDPrefix: "gh"})
		if err != nil {
			t.Fatal(err)
		}
		var sur string
		for _, c := range j.ServiceCredentials {
			if c.Name == githubTokenCredential {
				if c.Value != real || !reflect.DeepEqual(c.Hosts, tc.hosts) {
					t.Errorf("server %q: credential value %v hosts %v, want the token for %v", tc.server, c.Value == real, c.Hosts, tc.hosts)
				}
				sur = c.Surrogate
			}
		}
		if tc.hosts == nil {
			for _, v := range j.Variables {
				if v.Key == "FROM_SECRETS" && (sur != "" || v.Value != real) {
					t.Errorf("server %q: surrogate %q, FROM_SECRETS the token %v; want no surrogate", tc.server, sur, v.Value == real)
				}
			}
			continue
		}
		if !strings.HasPrefix(sur, "ghs_") || len(sur) < len(real) || strings.Contains(sur, real[4:]) {
			t.Fatalf("server %q: surrogate %q, want a ghs_ one of the token's length", tc.server, sur)
		}
		for _, v := range j.Variables {
			if (v.Key == "FROM_SECRETS" || v.Key == "FROM_GITHUB") && (v.Value != sur || !v.Masked) {
				t.Errorf("server %q: %s = %q (masked %v), want the surrogate, masked", tc.server, v.Key, v.Value, v.Masked)
			}
			if strings.Contains(v.Value, real) {
				t.Errorf("server %q: variable %s holds the token", tc.server, v.Key)
			}
		}
	}
	if a, b := githubTokenSurrogate(real), githubTokenSurrogate(real); a == b {
		t.Error("two surrogates of one token are equal")
	}
	if s := githubTokenSurrogate("opaque"); len(s) < 36 || strings.Contains(s, "opaque") {
		t.Errorf("surrogate of an opaque token = %q", s)
	}
}

// In the job's steps too: a step's env and an action's input from the
// token hold the surrogate, and a job output holding it is dropped.
func TestDriverGitHubTokenSurrogate(t *testing.T) {
	testenv.RequireDocker(t)
	const real = "ghs_testtoken0123456789abcdef"
	sum := sha256.Sum256([]byte(real))
	m := testMessage(testenv.TestImage,
		runStep("tok", "Token", lit(strings.Join([]string{
			`echo "step-sha=$(printf %s "$GH_TOKEN" | sha256sum | cut -c1-16) ctx-sha=$(printf %s "$FROM_CTX" | sha256sum | cut -c1-16)"`,
			`[ "$GH_TOKEN" = "$FROM_CTX" ] && echo same-surrogate`,
			`case "$GH_TOKEN" in ghs_*) echo ghs-shape;; esac`,
			`echo "tok=$GH_TOKEN" >> "$GITHUB_OUTPUT"`,
		}, "\n")), func(s *Step) {
			s.Environment = mapping("GH_TOKEN", exprTok("secrets.GITHUB_TOKEN"), "FROM_CTX", exprTok("github.token"))
		}),
	)
	m.JobOutputs = mapping("tok", exprTok("steps.tok.outputs.tok"))
	m.ContextData["github"] = Dict("event_name", "push", "repository", "acme/app", "ref", "refs/heads/main", "ref_name", "main",
		"sha", "0123456789abcdef0123456789abcdef01234567", "run_number", "7", "server_url", "https://github.com")
	res, d, log := runDriven(t, m, nil, DriverOptions{})
	if res.State != runner.Success {
		t.Fatalf("result = %s (%v)\n%s", res.State, res.Err, log)
	}
	for _, w := range []string{"same-surrogate", "ghs-shape", "Skip output 'tok' since it may contain secret"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	if strings.Contains(log, fmt.Sprintf("step-sha=%x", sum[:8])) || strings.Contains(log, real) {
		t.Errorf("the step got the real token:\n%s", log)
	}
	if out := d.Report().Outputs; out["tok"] != "" {
		t.Errorf("job output tok = %q, want it dropped", out["tok"])
	}
}
