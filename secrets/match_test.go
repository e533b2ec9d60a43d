package secrets_test

import (
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

func TestMatchPattern(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"group/app", "group/app", true},
		{"group/app", "group/app2", false},
		{"group/*", "group/app", true},
		{"group/*", "group/sub/app", false},
		{"group/*", "group", false},
		{"group/**", "group/app", true},
		{"group/**", "group/sub/app", true},
		{"group/**", "group", false},
		{"group/**", "other/app", false},
		{"**", "a/b/c", true},
		{"*/app", "group/app", true},
		{"*/app", "a/b/app", false},
		{"**/app", "a/b/app", true},
		{"release/*", "release/1.2", true},
		{"release/*", "release/1.2/hotfix", false},
		{"v?.*", "v1.2", true},
		{"v?.*", "v12.2", false},
		{"main", "main", true},
		{"main", "maint", false},
	}
	for _, tc := range tests {
		if got := secrets.MatchPattern(tc.pattern, tc.s); got != tc.want {
			t.Errorf("MatchPattern(%q, %q) = %t, want %t", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func grant(id string, mod func(*secrets.Grant)) secrets.Grant {
	g := secrets.Grant{ID: id, Secret: "deploy", Repo: "group/**", Delivery: job.DeliverEnv}
	if mod != nil {
		mod(&g)
	}
	return g
}

func TestDecide(t *testing.T) {
	base := secrets.JobIdentity{JobID: "1", Repo: "group/app", Ref: "main", Protected: true, Environment: "production", Source: job.SourceGitLab}
	req := job.SecretRequest{Name: "deploy"}
	tests := []struct {
		name      string
		grants    []secrets.Grant
		id        func(*secrets.JobIdentity)
		req       func(*job.SecretRequest)
		wantGrant string   // "" = refused
		wantWhy   []string // substrings of the refusal
	}{
		{name: "no grants", wantWhy: []string{"no grant exists", "airlock grant add deploy --repo group/app --ref main --protected-only --env production --source gitlab --deliver env"}},
		{name: "repo glob matches", grants: []secrets.Grant{grant("g1", nil)}, wantGrant: "g1"},
		{name: "single star does not cross segments", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Repo = "group/*" })},
			id: func(i *secrets.JobIdentity) { i.Repo = "group/sub/app" }, wantWhy: []string{`repo "group/sub/app" does not match "group/*"`}},
		{name: "other secret's grant is no near miss", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Secret = "other" })},
			wantWhy: []string{"no grant exists"}},
		{name: "ref glob", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Refs = []string{"release/*"} })},
			wantWhy: []string{`ref "main" does not match "release/*"`}},
		{name: "ref glob matches", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Refs = []string{"release/*", "main"} })}, wantGrant: "g1"},
		{name: "protected only", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.ProtectedOnly = true })},
			id: func(i *secrets.JobIdentity) { i.Protected = false }, wantWhy: []string{"not protected"}},
		{name: "env", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Envs = []string{"staging"} })},
			wantWhy: []string{`environment production does not match "staging"`}},
		{name: "env required but job has none", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Envs = []string{"prod*"} })},
			id: func(i *secrets.JobIdentity) { i.Environment = "" }, wantWhy: []string{"environment (none)"}},
		{name: "source", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Source = job.SourceGitHub })},
			wantWhy: []string{"source gitlab is not github"}},
		{name: "fork refused by default", grants: []secrets.Grant{grant("g1", nil)},
			id:      func(i *secrets.JobIdentity) { i.Fork = true },
			wantWhy: []string{"the job runs code from a fork and the grant does not allow forks", "--allow-forks"}},
		{name: "fork allowed by the grant", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.AllowForks = true })},
			id: func(i *secrets.JobIdentity) { i.Fork = true }, wantGrant: "g1"},
		{name: "event", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Events = []string{"push", "workflow_*"} })},
			id: func(i *secrets.JobIdentity) { i.Event = "pull_request" }, wantWhy: []string{`event "pull_request" does not match "push" or "workflow_*"`}},
		{name: "event matches", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) { g.Events = []string{"push", "workflow_*"} })},
			id: func(i *secrets.JobIdentity) { i.Event = "workflow_dispatch" }, wantGrant: "g1"},
		{name: "delivery", grants: []secrets.Grant{grant("g1", nil)}, req: func(r *job.SecretRequest) { r.Delivery = job.DeliverProxy },
			wantWhy: []string{"delivery proxy requested but the grant delivers by env", "--deliver proxy --host HOST"}},
		{name: "every reason listed", grants: []secrets.Grant{grant("g1", func(g *secrets.Grant) {
			g.Repo, g.Refs, g.Envs, g.Source = "other/*", []string{"dev"}, []string{"qa"}, job.SourceLocal
		})}, wantWhy: []string{"grant g1 does not match", "repo", "ref", "environment", "source gitlab is not local"}},
		{name: "most specific wins", grants: []secrets.Grant{
			grant("broad", nil),
			grant("exact", func(g *secrets.Grant) { g.Repo = "group/app" }),
			grant("star", func(g *secrets.Grant) { g.Repo = "group/*" }),
		}, wantGrant: "exact"},
		{name: "restricted beats unrestricted", grants: []secrets.Grant{
			grant("a", nil),
			grant("b", func(g *secrets.Grant) { g.Envs = []string{"production"} }),
		}, wantGrant: "b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, r := base, req
			if tc.id != nil {
				tc.id(&id)
			}
			if tc.req != nil {
				tc.req(&r)
			}
			d := secrets.Decide(tc.grants, id, r)
			if tc.wantGrant != "" {
				if !d.Allowed() || d.Grant.ID != tc.wantGrant {
					t.Fatalf("Decide = %v (err %v), want grant %s", d.Grant, d.Err(), tc.wantGrant)
				}
				if d.Err() != nil {
					t.Errorf("Err() = %v on an allowed decision", d.Err())
				}
				return
			}
			if d.Allowed() {
				t.Fatalf("Decide allowed by grant %s, want a refusal", d.Grant.ID)
			}
			msg := d.Err().Error()
			for _, w := range append([]string{`secret "deploy"`, `repo "` + id.Repo + `"`, `ref "` + id.Ref + `"`, "airlock grant add"}, tc.wantWhy...) {
				if !strings.Contains(msg, w) {
					t.Errorf("refusal %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestDecisionVarName(t *testing.T) {
	g := grant("g", func(g *secrets.Grant) { g.Var = "GRANT_VAR" })
	id := secrets.JobIdentity{Repo: "group/app", Ref: "main"}
	tests := []struct {
		req  job.SecretRequest
		want string
	}{
		{job.SecretRequest{Name: "deploy", Var: "JOB_VAR"}, "JOB_VAR"},
		{job.SecretRequest{Name: "deploy"}, "GRANT_VAR"},
	}
	for _, tc := range tests {
		if got := secrets.Decide([]secrets.Grant{g}, id, tc.req).VarName(); got != tc.want {
			t.Errorf("VarName(%+v) = %q, want %q", tc.req, got, tc.want)
		}
	}
	if got := secrets.Decide(nil, id, job.SecretRequest{Name: "deploy-key"}).VarName(); got != "DEPLOY_KEY" {
		t.Errorf("VarName(no grant) = %q, want DEPLOY_KEY", got)
	}
}

func TestCeilingMostSpecificWins(t *testing.T) {
	ps := []secrets.EgressPolicy{
		{RepoPattern: "**", Egress: []string{"any.test:443"}},
		{RepoPattern: "group/**", Egress: []string{"group.test:443"}},
		{RepoPattern: "group/*", Egress: []string{"star.test:443"}},
		{RepoPattern: "group/app", Egress: []string{"app.test:443"}},
	}
	tests := []struct{ repo, want string }{
		{"group/app", "group/app"},
		{"group/other", "group/*"},
		{"group/sub/x", "group/**"},
		{"elsewhere/x", "**"},
	}
	for _, tc := range tests {
		p, ok := secrets.Ceiling(ps, tc.repo, "")
		if !ok || p.RepoPattern != tc.want {
			t.Errorf("Ceiling(%q) = %q, %t; want %q", tc.repo, p.RepoPattern, ok, tc.want)
		}
	}
	if _, ok := secrets.Ceiling(ps[1:], "elsewhere/x", ""); ok {
		t.Errorf("Ceiling(elsewhere/x) without '**' found a policy, want none")
	}
}

// A ceiling bound to an instance applies to that instance's jobs only
// (the same path elsewhere is another project), and of equally specific
// patterns the instance's own wins over the one for any instance.
func TestCeilingByInstance(t *testing.T) {
	a, b := "https://gitlab.a.test", "https://gitlab.b.test"
	ps := []secrets.EgressPolicy{
		{RepoPattern: "group/*", Egress: []string{"any.test:443"}},
		{RepoPattern: "group/*", Instance: a, Egress: []string{"a.test:443"}},
		{RepoPattern: "group/app", Instance: b + "/", Egress: []string{"b-app.test:443"}},
		{RepoPattern: "only/*", Instance: a, Egress: []string{"only-a.test:443"}},
	}
	tests := []struct {
		repo, instance string
		want           string // the first egress entry; "" for none
	}{
		{"group/x", a, "a.test:443"},
		{"group/x", "HTTPS://GITLAB.A.TEST/", "a.test:443"},
		{"group/x", b, "any.test:443"},
		{"group/x", "", "any.test:443"},
		{"group/app", b, "b-app.test:443"}, // more specific beats the instance-free group/*
		{"group/app", a, "a.test:443"},
		{"only/x", a, "only-a.test:443"},
		{"only/x", b, ""},
		{"only/x", "", ""},
	}
	for _, tc := range tests {
		p, ok := secrets.Ceiling(ps, tc.repo, tc.instance)
		got := ""
		if ok {
			got = p.Egress[0]
		}
		if got != tc.want {
			t.Errorf("Ceiling(%q, %q) = %q, want %q", tc.repo, tc.instance, got, tc.want)
		}
	}
}

func TestGrantValidate(t *testing.T) {
	tests := []struct {
		name string
		g    secrets.Grant
		want string // "" = valid
	}{
		{"valid env", grant("g", nil), ""},
		{"valid proxy", grant("g", func(g *secrets.Grant) { g.Delivery, g.Hosts = job.DeliverProxy, []string{"api.allowed.test"} }), ""},
		{"proxy without host", grant("g", func(g *secrets.Grant) { g.Delivery = job.DeliverProxy }), "host:"},
		{"env with host", grant("g", func(g *secrets.Grant) { g.Hosts = []string{"a.test"} }), "only proxy"},
		{"bad header", grant("g", func(g *secrets.Grant) {
			g.Delivery, g.Hosts, g.Header = job.DeliverProxy, []string{"a.test"}, "Authorization: Bearer"
		}), "{{value}}"},
		{"no delivery", grant("g", func(g *secrets.Grant) { g.Delivery = "" }), "deliver"},
		{"bad source", grant("g", func(g *secrets.Grant) { g.Source = "svn" }), "source"},
		{"empty repo", grant("g", func(g *secrets.Grant) { g.Repo = "" }), "repo"},
		{"bad var", grant("g", func(g *secrets.Grant) { g.Var = "1X" }), "var"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.g.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzMatchPattern(f *testing.F) {
	for _, seed := range [][2]string{{"group/**", "group/a/b"}, {"*-*-*-*-*-*-*-*x", strings.Repeat("-", 200)}, {"v?.*", "v1.2"}, {"a", "a"}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		got := secrets.MatchPattern(pattern, s)
		if !strings.ContainsAny(pattern, "*?") && got != (pattern == s) {
			t.Errorf("MatchPattern(%q, %q) = %t for a literal pattern", pattern, s, got)
		}
		if secrets.MatchPattern("**", s) != true {
			t.Errorf("MatchPattern(**, %q) = false", s)
		}
		if pattern == s && !got && !strings.ContainsAny(pattern, "*?") {
			t.Errorf("MatchPattern(%q, itself) = false", pattern)
		}
	})
}
