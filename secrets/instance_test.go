package secrets_test

import (
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

// A grant may be restricted to one coordinator instance: the same repo
// path on another GitLab is another project.
func TestDecideInstance(t *testing.T) {
	id := secrets.IdentityOf(&job.Job{ID: "gitlab-1a2b3c4d-7", Source: job.SourceGitLab, Repo: "group/app", Ref: "main",
		Instance: "https://gitlab.one.test"})
	req := job.SecretRequest{Name: "deploy"}
	tests := []struct {
		name     string
		instance string // the grant's
		jobInst  string
		allowed  bool
	}{
		{name: "any instance", instance: "", jobInst: "https://gitlab.one.test", allowed: true},
		{name: "same instance", instance: "https://gitlab.one.test/", jobInst: "https://gitlab.one.test", allowed: true},
		{name: "other instance", instance: "https://gitlab.two.test", jobInst: "https://gitlab.one.test", allowed: false},
		{name: "local job", instance: "https://gitlab.one.test", jobInst: "", allowed: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := grant("g1", func(g *secrets.Grant) { g.Instance = tc.instance })
			if err := g.Validate(); err != nil {
				t.Fatalf("grant: %v", err)
			}
			jid := id
			jid.Instance = tc.jobInst
			d := secrets.Decide([]secrets.Grant{g}, jid, req)
			if d.Allowed() != tc.allowed {
				t.Fatalf("Decide() allowed = %t, want %t (%v)", d.Allowed(), tc.allowed, d.Err())
			}
			if !tc.allowed && (d.Err() == nil || !strings.Contains(d.Err().Error(), "instance")) {
				t.Errorf("refusal %v does not name the instance", d.Err())
			}
		})
	}
	if g := grant("g2", func(g *secrets.Grant) { g.Instance = "gitlab.one.test" }); g.Validate() == nil {
		t.Errorf("grant with instance %q validated, want an error", g.Instance)
	}
	d := secrets.Decide(nil, id, req)
	if !strings.Contains(d.Suggestion(), "--instance https://gitlab.one.test") {
		t.Errorf("Suggestion() = %q, want it to name the instance", d.Suggestion())
	}
}
