package github

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

func TestServiceOptions(t *testing.T) {
	for _, tc := range []struct {
		opts   string
		health *job.HealthCheck
		ep     []string
		vars   []string
	}{
		// GitHub's own postgres example, as YAML's >- folds it.
		{opts: "--health-cmd pg_isready --health-interval 10s --health-timeout 5s --health-retries 5",
			health: &job.HealthCheck{Test: []string{"CMD-SHELL", "pg_isready"}, Interval: 10 * time.Second, Timeout: 5 * time.Second, Retries: 5}},
		{opts: "--health-cmd \"redis-cli ping\"\n--health-start-period=30s",
			health: &job.HealthCheck{Test: []string{"CMD-SHELL", "redis-cli ping"}, StartPeriod: 30 * time.Second}},
		{opts: `--health-cmd='mysqladmin ping -h "127.0.0.1"' --health-interval=1m30s`,
			health: &job.HealthCheck{Test: []string{"CMD-SHELL", `mysqladmin ping -h "127.0.0.1"`}, Interval: 90 * time.Second}},
		{opts: `--health-cmd "echo \"a b\"" --health-retries 0`,
			health: &job.HealthCheck{Test: []string{"CMD-SHELL", `echo "a b"`}}},
		{opts: "--health-interval 2s", health: &job.HealthCheck{Interval: 2 * time.Second}}, // tunes the image's check
		{opts: "--no-healthcheck", health: &job.HealthCheck{Test: []string{"NONE"}}},
		{opts: "-e FOO=bar --env=EMPTY= --entrypoint redis-server", ep: []string{"redis-server"}, vars: []string{"FOO=bar", "EMPTY="}},
		{opts: "   "},
	} {
		var svc job.Service
		if err := applyServiceOptions(&svc, tc.opts); err != nil {
			t.Errorf("%q: %v", tc.opts, err)
			continue
		}
		if (svc.Health == nil) != (tc.health == nil) || svc.Health != nil && (!slices.Equal(svc.Health.Test, tc.health.Test) ||
			svc.Health.Interval != tc.health.Interval || svc.Health.Timeout != tc.health.Timeout ||
			svc.Health.StartPeriod != tc.health.StartPeriod || svc.Health.Retries != tc.health.Retries) {
			t.Errorf("%q: health = %+v, want %+v", tc.opts, svc.Health, tc.health)
		}
		if !slices.Equal(svc.Entrypoint, tc.ep) {
			t.Errorf("%q: entrypoint = %q, want %q", tc.opts, svc.Entrypoint, tc.ep)
		}
		var vars []string
		for _, v := range svc.Variables {
			vars = append(vars, v.Key+"="+v.Value)
		}
		if !slices.Equal(vars, tc.vars) {
			t.Errorf("%q: variables = %q, want %q", tc.opts, vars, tc.vars)
		}
	}
}

// Every problem is named: unsupported flags, bad values, quoting.
func TestServiceOptionsRefused(t *testing.T) {
	for opts, want := range map[string]string{
		"--privileged":                            "--privileged is not supported",
		"--health-cmd x -p 5432:5432":             "-p is not supported",
		"-v /var/run/docker.sock:/var/run/d.sock": "-v is not supported",
		"--health-interval soon":                  `--health-interval "soon": not a duration`,
		"--health-retries=-1":                     "--health-retries \"-1\": not a count",
		"--health-cmd":                            "--health-cmd: no value",
		`--health-cmd "pg_isready`:                "double quote is not closed",
		"--health-cmd 'x":                         "single quote is not closed",
		"--no-healthcheck --health-cmd true":      "--no-healthcheck with --health-* flags",
		"pg_isready":                              `"pg_isready": not a flag`,
		"-e 1BAD=x":                               `-e "1BAD": want KEY=VALUE`,
	} {
		var svc job.Service
		err := applyServiceOptions(&svc, opts)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", opts, err, want)
		}
	}
}

// Options are container configuration: one made from a secret is refused
// without the secret in the message.
func TestToJobServiceOptionsSecret(t *testing.T) {
	m := loadMessage(t)
	m.JobServiceContainers = &TemplateToken{Type: TokenMapping, Map: []MapEntry{
		{Key: &TemplateToken{Lit: "db"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
			{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "postgres:16"}},
			{Key: &TemplateToken{Lit: "options"}, Value: &TemplateToken{Type: TokenExpression, Expr: "format('--health-cmd \"psql {0}\"', secrets.DEPLOY_KEY)"}},
		}}},
		{Key: &TemplateToken{Lit: "cache"}, Value: &TemplateToken{Type: TokenMapping, Map: []MapEntry{
			{Key: &TemplateToken{Lit: "image"}, Value: &TemplateToken{Lit: "redis:7"}},
			{Key: &TemplateToken{Lit: "options"}, Value: &TemplateToken{Lit: "--health-cmd \"redis-cli ping\" --health-interval 10s"}},
		}}},
	}}
	_, err := m.ToJob(ConvertOptions{})
	if err == nil || !strings.Contains(err.Error(), "db.options: holds a secret") || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("ToJob = %v, want db.options refused without the value", err)
	}
	m.JobServiceContainers.Map = m.JobServiceContainers.Map[1:]
	j, err := m.ToJob(ConvertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := j.Services[0]
	if !s.WaitHealthy || s.Health == nil || !slices.Equal(s.Health.Test, []string{"CMD-SHELL", "redis-cli ping"}) || s.Health.Interval != 10*time.Second {
		t.Errorf("service cache = %+v (health %+v), want its health check, waited for", s, s.Health)
	}
}

// Any options string is parsed or refused, never a panic; a parsed
// health check is well formed.
func FuzzServiceOptions(f *testing.F) {
	for _, s := range []string{"--health-cmd pg_isready --health-interval 10s", `--health-cmd "a \"b\"" -e A=b`, "--no-healthcheck", "'", `"\`, "-e", "--entrypoint=x --health-retries=3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, opts string) {
		var svc job.Service
		if err := applyServiceOptions(&svc, opts); err != nil {
			return
		}
		if h := svc.Health; h != nil && (h.Interval < 0 || h.Timeout < 0 || h.StartPeriod < 0 || h.Retries < 0 ||
			len(h.Test) > 0 && h.Test[0] != "CMD-SHELL" && h.Test[0] != "NONE") {
			t.Errorf("%q: health %+v", opts, h)
		}
		for _, v := range svc.Variables {
			if !job.ValidVarName(v.Key) {
				t.Errorf("%q: variable %q", opts, v.Key)
			}
		}
	})
}

// A job container's options may set variables (-e/--env, delivered like
// container.env), its user (-u/--user), its /dev/shm (--shm-size) and
// --init (its processes always have one); anything else is refused by
// name.
func TestJobContainerOptions(t *testing.T) {
	o, err := jobContainerOptions("--init -e FOO=bar --user 1001:121 --env=EMPTY= --env 'SPACED=a b' --shm-size=2g")
	if err != nil {
		t.Fatal(err)
	}
	if o.user != "1001:121" || o.shm != 2<<30 {
		t.Errorf("user = %q, shm %d; want 1001:121, 2 GiB", o.user, o.shm)
	}
	var got []string
	for _, kv := range o.env {
		got = append(got, kv.Key+"="+kv.Value)
	}
	if want := []string{"FOO=bar", "EMPTY=", "SPACED=a b"}; !slices.Equal(got, want) {
		t.Errorf("variables = %q, want %q", got, want)
	}
	for opts, want := range map[string]string{
		"--hostname h":               "--hostname is not supported by Airlock (supported: -e, --env, -u, --user, --shm-size, --init)",
		"--shm-size lots":            `--shm-size: size "lots"`,
		"--shm-size 99999999999g":    `--shm-size: size "99999999999g": too large`,
		"-u 'root; rm'":              "-u: not a user name or uid",
		"--privileged -e A=1":        "--privileged is not supported",
		"-v /var/run/docker.sock:/x": "-v is not supported",
		"-e HOME":                    `-e "HOME": want KEY=VALUE`,
		"--init=true":                "--init takes no value",
		"--cpus 2":                   "--cpus is not supported",
	} {
		if _, err := jobContainerOptions(opts); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %q", opts, err, want)
		}
	}
}
