package github

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

func TestToJob(t *testing.T) {
	m := loadMessage(t)
	j, err := m.ToJob(ConvertOptions{IDPrefix: "github-acme", DefaultImage: "default:img"})
	if err != nil {
		t.Fatalf("ToJob: %v", err)
	}
	if j.ID != "github-acme-5e2f9a70-2222-5b2e-8c7d-3c1e5c2f1b02" || j.Source != job.SourceGitHub {
		t.Errorf("id/source = %q %q", j.ID, j.Source)
	}
	if j.Repo != "acme/app" || j.Ref != "7/merge" || j.SHA == "" || j.Protected {
		t.Errorf("identity = %q %q %q %v", j.Repo, j.Ref, j.SHA, j.Protected)
	}
	if j.Instance != "https://github.com" || j.CoordinatorID != m.JobID {
		t.Errorf("instance/coordinator id = %q %q", j.Instance, j.CoordinatorID)
	}
	if j.BeforeSHA != "fedcba9876543210fedcba9876543210fedcba98" {
		t.Errorf("BeforeSHA = %q, want the pull request's base (the leak scan's range start)", j.BeforeSHA)
	}
	if j.Event != "pull_request" || !j.Fork {
		t.Errorf("event/fork = %q %v, want pull_request true", j.Event, j.Fork)
	}
	if j.Image != "airlock-test:busybox" {
		t.Errorf("image = %q", j.Image)
	}
	if len(j.Secrets) != 1 || j.Secrets[0].Name != "npm_token" || j.Secrets[0].Delivery != job.DeliverProxy {
		t.Errorf("secrets = %+v", j.Secrets)
	}
	if len(j.Egress) != 1 || j.Egress[0] != "registry.npmjs.org" {
		t.Errorf("egress = %v", j.Egress)
	}
	if len(j.Variables) != 1 || j.Variables[0].Key != "GREETING" || j.Variables[0].Value != "hello linux" {
		t.Errorf("variables = %+v (declarations must not be exported, expressions evaluated)", j.Variables)
	}
	if len(j.Steps) != 5 {
		t.Fatalf("steps = %+v", j.Steps)
	}
	s0, s1, s2, s3, s4 := j.Steps[0], j.Steps[1], j.Steps[2], j.Steps[3], j.Steps[4]
	if s0.Kind != job.StepRun || s0.ID != "ver" || s0.Name != "Compute version" || s0.Shell != "sh" || s0.WorkingDirectory != "app" {
		t.Errorf("step 0 = %+v (defaults.run must apply)", s0)
	}
	if want := `${{ format('echo "v=1.{0}" >> "$GITHUB_OUTPUT"', github.run_number) }}`; s0.Run != want {
		t.Errorf("step 0 run = %q, want %q", s0.Run, want)
	}
	if s1.Name != "Test linux" || s1.Shell != "bash" || s1.WorkingDirectory != "src" || s1.Timeout != 10*time.Minute {
		t.Errorf("step 1 = %+v", s1)
	}
	if s1.ContinueOnError != "${{ matrix.os == 'linux' }}" || s1.If != "success() && (github.event_name == 'pull_request')" {
		t.Errorf("step 1 templates = %q %q", s1.ContinueOnError, s1.If)
	}
	if len(s1.Env) != 1 || s1.Env[0] != (job.KV{Key: "TOKEN", Value: "${{ secrets.DEPLOY_KEY }}"}) {
		t.Errorf("step 1 env = %+v", s1.Env)
	}
	if s2.Kind != job.StepUses || s2.Uses != "actions/checkout@v4" || s2.Name != "Run actions/checkout@v4" || len(s2.With) != 1 || s2.With[0].Value != "0" {
		t.Errorf("step 2 = %+v", s2)
	}
	if s3.Uses != "./.github/actions/hello" || s3.Timeout != 0 {
		t.Errorf("step 3 = %+v (0.5 minutes truncates to no timeout)", s3)
	}
	if s4.Uses != "docker://alpine:3" {
		t.Errorf("step 4 = %+v", s4)
	}
	if len(j.Outputs) != 1 || j.Outputs[0] != (job.KV{Key: "version", Value: "${{ steps.ver.outputs.v }}"}) {
		t.Errorf("outputs = %+v", j.Outputs)
	}
}

func TestToJobRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(m *AgentJobRequestMessage)
		want string
	}{
		{"service options", func(m *AgentJobRequestMessage) {
			m.JobServiceContainers = &TemplateToken{Type: TokenMapping, Map: []MapEntry{{Key: &TemplateToken{Lit: "db"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
				{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "postgres:16"}},
				{Key: &TemplateToken{Lit: "options"}, Value: &TemplateToken{Lit: "--health-cmd pg_isready --privileged"}}}}}}}
		}, "services: db.options: --privileged is not supported"},
		{"service port remap", func(m *AgentJobRequestMessage) {
			m.JobServiceContainers = &TemplateToken{Type: TokenMapping, Map: []MapEntry{{Key: &TemplateToken{Lit: "db"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
				{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "postgres:16"}},
				{Key: &TemplateToken{Lit: "ports"}, Value: &TemplateToken{Type: TokenSequence, Seq: []*TemplateToken{{Lit: "15432:5432"}}}}}}}}}
		}, "remapping them is not supported"},
		{"container volumes", func(m *AgentJobRequestMessage) {
			m.JobContainer = &TemplateToken{Type: TokenMapping, Map: []MapEntry{
				{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "img"}},
				{Key: &TemplateToken{Lit: "volumes"}, Value: &TemplateToken{Type: TokenSequence, Seq: []*TemplateToken{{Lit: "/a:/b"}}}}}}
		}, "container.volumes is not supported"},
		{"bad declaration", func(m *AgentJobRequestMessage) {
			m.EnvironmentVariables[0].Map[0].Value = &TemplateToken{Lit: "x@nowhere"}
		}, "AIRLOCK_SECRETS"},
		{"empty script", func(m *AgentJobRequestMessage) {
			m.Steps[1].Inputs.Map[0].Value = &TemplateToken{Lit: " "}
		}, "step 2 (Test linux): run: no script"},
		{"negative timeout", func(m *AgentJobRequestMessage) {
			m.Steps[1].TimeoutInMinutes = &TemplateToken{Type: TokenNumber, Num: -1}
		}, "timeout-minutes"},
		{"bad if", func(m *AgentJobRequestMessage) {
			m.Steps[1].Condition = "success() && (github.ref =="
		}, "step 2 (Test linux): if: parsing expression"},
		{"bad step env template", func(m *AgentJobRequestMessage) {
			m.Steps[1].Environment = mapping("X", exprTok("nosuch(1)"))
		}, "step 2 (Test linux): env X: parsing expression"},
		{"bad env expression", func(m *AgentJobRequestMessage) {
			m.EnvironmentVariables[0].Map[2].Value = &TemplateToken{Type: TokenExpression, Expr: "nosuch()"}
		}, "env GREETING"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := loadMessage(t)
			tc.edit(m)
			_, err := m.ToJob(ConvertOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ToJob() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestIsFork(t *testing.T) {
	for _, tc := range []struct {
		gh   *ContextData
		want bool
	}{
		{Dict("event_name", "push", "repository", "a/b"), false},
		{Dict("event_name", "pull_request", "repository", "a/b", "event", Dict("pull_request", Dict("head", Dict("repo", Dict("full_name", "a/b", "fork", false))))), false},
		{Dict("event_name", "pull_request", "repository", "a/b", "event", Dict("pull_request", Dict("head", Dict("repo", Dict("full_name", "x/b", "fork", false))))), true},
		{Dict("event_name", "pull_request_target", "repository", "a/b", "event", Dict("pull_request", Dict("head", Dict("repo", Dict("full_name", "a/b", "fork", true))))), true},
		{Dict("event_name", "pull_request_target", "repository", "a/b"), true},
	} {
		if got := isFork(tc.gh); got != tc.want {
			b, _ := tc.gh.MarshalJSON()
			t.Errorf("isFork(%s) = %v, want %v", b, got, tc.want)
		}
	}
}

// A job from a fork gets no credential unless the grant allows forks.
func TestForkJobRefusedCredentials(t *testing.T) {
	m := loadMessage(t)
	j, err := m.ToJob(ConvertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := secrets.Grant{ID: "g1", Secret: "npm_token", Repo: "acme/*", Source: job.SourceGitHub, Delivery: job.DeliverProxy}
	d := secrets.Decide([]secrets.Grant{g}, secrets.IdentityOf(j), j.Secrets[0])
	if d.Allowed() || !strings.Contains(d.Err().Error(), "fork") {
		t.Errorf("fork job: decision %v, want refused naming the fork", d.Err())
	}
	g.AllowForks = true
	if d := secrets.Decide([]secrets.Grant{g}, secrets.IdentityOf(j), j.Secrets[0]); !d.Allowed() {
		t.Errorf("grant allowing forks refused: %v", d.Err())
	}
}

func TestToJobServices(t *testing.T) {
	m := loadMessage(t)
	m.JobServiceContainers = &TemplateToken{Type: TokenMapping, Map: []MapEntry{
		{Key: &TemplateToken{Lit: "cache"}, Value: &TemplateToken{Lit: "redis:7"}},
		{Key: &TemplateToken{Lit: "db"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
			{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "postgres:16"}},
			{Key: &TemplateToken{Lit: "env"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
				{Key: &TemplateToken{Lit: "POSTGRES_PASSWORD"}, Value: &TemplateToken{Lit: "ci"}},
				{Key: &TemplateToken{Lit: "API_KEY"}, Value: &TemplateToken{Type: TokenExpression, Expr: "format('key-{0}', secrets.DEPLOY_KEY)"}}}}},
			{Key: &TemplateToken{Lit: "ports"}, Value: &TemplateToken{Type: TokenSequence, Seq: []*TemplateToken{{Lit: "5432"}, {Lit: "5432:5432"}}}},
		}}},
	}}
	j, err := m.ToJob(ConvertOptions{IDPrefix: "github-acme", DefaultImage: "default:img"})
	if err != nil {
		t.Fatalf("ToJob: %v", err)
	}
	if len(j.Services) != 2 {
		t.Fatalf("services = %+v, want 2", j.Services)
	}
	c, d := j.Services[0], j.Services[1]
	if c.Image != "redis:7" || len(c.Aliases) != 1 || c.Aliases[0] != "cache" {
		t.Errorf("service cache = %+v", c)
	}
	if d.Image != "postgres:16" || d.Aliases[0] != "db" || len(d.Variables) != 2 || d.Variables[0].Key != "POSTGRES_PASSWORD" || d.Variables[0].Value != "ci" || d.Variables[0].Masked {
		t.Errorf("service db = %+v", d)
	}
	// A value made from a secret is marked so: the runner then gives it to
	// the service's process, never in its container's configuration.
	if k := d.Variables[1]; k.Key != "API_KEY" || k.Value != "key-s3cr3t-deploy-value" || !k.Masked {
		t.Errorf("service db's API_KEY = %+v, want the secret's value, masked", k)
	}
}

// container.credentials and a service's pull their images from the
// images' registries; an incomplete pair is refused without its values.
func TestToJobRegistryCredentials(t *testing.T) {
	m := loadMessage(t)
	m.JobContainer = &TemplateToken{Type: TokenMapping, Map: []MapEntry{
		{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "ghcr.io/acme/builder:1"}},
		{Key: &TemplateToken{Lit: "credentials"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
			{Key: &TemplateToken{Lit: "username"}, Value: &TemplateToken{Lit: "acme-bot"}},
			{Key: &TemplateToken{Lit: "password"}, Value: &TemplateToken{Type: TokenExpression, Expr: "secrets.DEPLOY_KEY"}}}}},
	}}
	m.JobServiceContainers = &TemplateToken{Type: TokenMapping, Map: []MapEntry{
		{Key: &TemplateToken{Lit: "db"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
			{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "registry.acme.example:5000/pg:16"}},
			{Key: &TemplateToken{Lit: "credentials"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
				{Key: &TemplateToken{Lit: "username"}, Value: &TemplateToken{Lit: "db-puller"}},
				{Key: &TemplateToken{Lit: "password"}, Value: &TemplateToken{Lit: "pw-db-0123456"}}}}},
		}}},
	}}
	j, err := m.ToJob(ConvertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []job.RegistryAuth{{Registry: "ghcr.io", Username: "acme-bot", Password: "s3cr3t-deploy-value"},
		{Registry: "registry.acme.example:5000", Username: "db-puller", Password: "pw-db-0123456"}}
	if !slices.Equal(j.RegistryAuth, want) {
		t.Errorf("RegistryAuth = %+v, want %+v", j.RegistryAuth, want)
	}
	if !slices.Contains(j.Masked(), "pw-db-0123456") {
		t.Errorf("the service's registry password is not masked")
	}
	m.JobContainer.Map[1].Value.Map = m.JobContainer.Map[1].Value.Map[1:] // password only
	if _, err := m.ToJob(ConvertOptions{}); err == nil || !strings.Contains(err.Error(), "credentials: want both username and password") || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("ToJob with a password alone = %v, want a refusal without the value", err)
	}
}

// container.options --user runs the job as that user, unless it holds a
// secret's value (it would be in the container's configuration);
// --shm-size sizes its /dev/shm.
func TestToJobContainerUser(t *testing.T) {
	m := loadMessage(t)
	options := &TemplateToken{Lit: "--user 1001 -e A=1 --shm-size 1g"}
	m.JobContainer = &TemplateToken{Type: TokenMapping, Map: []MapEntry{
		{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "airlock-test:busybox"}},
		{Key: &TemplateToken{Lit: "options"}, Value: options},
	}}
	j, err := m.ToJob(ConvertOptions{})
	if err != nil || j.User != "1001" || j.ShmSize != 1<<30 {
		t.Fatalf("ToJob = user %q, shm %d, %v; want 1001, 1 GiB", j.User, j.ShmSize, err)
	}
	*options = TemplateToken{Type: TokenExpression, Expr: "format('--user {0}', secrets.DEPLOY_KEY)"}
	if _, err := m.ToJob(ConvertOptions{}); err == nil || !strings.Contains(err.Error(), "container.options --user: holds a secret's value") || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("ToJob with a secret as the user = %v, want a refusal without the value", err)
	}
}
