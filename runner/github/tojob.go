package github

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/github/expr"
	"github.com/airlock-ci/airlock/runner/job"
)

// DefaultJobTimeout is GitHub's default job timeout (the service enforces
// the workflow's own by cancelling the job).
const DefaultJobTimeout = 360 * time.Minute

// ConvertOptions are what a conversion needs besides the message.
type ConvertOptions struct {
	// IDPrefix makes job ids unique across coordinators ("github-NAME").
	IDPrefix string
	// DefaultImage is used when the job names no container.
	DefaultImage string
}

// ToJob converts the job message into the normalized job. What the job
// needs at run time (step conditions, step env and inputs, outputs) stays
// as templates for the Driver; the job-level env, defaults and container
// are evaluated here, with the contexts GitHub allows there. Every problem
// is reported at once, naming the step and the feature.
func (m *AgentJobRequestMessage) ToJob(o ConvertOptions) (*job.Job, error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	gh := m.ContextData.Get("github")
	j := &job.Job{
		ID:            jobID(o.IDPrefix, m.JobID),
		Source:        job.SourceGitHub,
		Instance:      strings.TrimRight(gh.StringAt("server_url"), "/"),
		CoordinatorID: m.JobID,
		Name:          m.JobDisplayName,
		Repo:          gh.StringAt("repository"),
		Ref:           refName(gh),
		SHA:           gh.StringAt("sha"),
		BeforeSHA:     changeBase(gh),
		Protected:     gh.StringAt("ref_protected") == "true",
		Event:         gh.StringAt("event_name"),
		Fork:          isFork(gh),
		Timeout:       DefaultJobTimeout,
		Image:         o.DefaultImage,
	}
	if j.Name == "" {
		j.Name = m.JobName
	}
	if m.ActionsEnvironment != nil {
		j.Environment = m.ActionsEnvironment.Name
	}
	// GITHUB_TOKEN by surrogate, where the server has a name to bind it
	// to (else the job holds the token, as with GitHub's runner).
	if tok, hosts := m.GitHubToken(), m.githubTokenHosts(); tok != "" && len(hosts) > 0 {
		j.ServiceCredentials = append(j.ServiceCredentials, job.ServiceCredential{
			Name: githubTokenCredential, Surrogate: githubTokenSurrogate(tok), Value: tok, Hosts: hosts})
	}
	env := m.baseEnv(nil, j)

	// Job env: workflow-level mappings first, then the job's.
	jobEnv := expr.NewObject()
	for i, tok := range m.EnvironmentVariables {
		if tok == nil {
			continue
		}
		if tok.Type != TokenMapping {
			add("environmentVariables[%d]: not a mapping", i)
			continue
		}
		for _, e := range tok.Map {
			k, _ := e.Key.Literal()
			env.Contexts["env"] = jobEnv
			v, err := evalToken(e.Value, env)
			if err != nil {
				add("env %s: %v", k, err)
				continue
			}
			jobEnv.Set(k, v)
		}
	}
	secrets := m.secretValues(j)
	for _, k := range jobEnv.Keys() {
		v, _ := jobEnv.Get(k)
		val := expr.String(v)
		switch strings.ToUpper(k) {
		case job.SecretsVariable:
			reqs, err := job.ParseSecrets(val)
			if err != nil {
				add("env %s: %v", job.SecretsVariable, err)
			}
			j.Secrets = reqs
			continue
		case job.EgressVariable:
			j.Egress = job.SplitList(val)
			continue
		}
		if !job.ValidVarName(k) {
			add("env %q: not a valid variable name", k)
			continue
		}
		j.Variables = append(j.Variables, job.Variable{Key: k, Value: val, Masked: containsSecret(val, secrets), Raw: true})
	}

	// Container: a string or a mapping with image; anything else it
	// could say is refused by name.
	if c := m.JobContainer; c != nil && c.Type != TokenNull {
		env.Contexts["env"] = jobEnv
		jc, err := containerImage(c, env)
		if err != nil {
			add("container: %v", err)
		} else if jc.image != "" {
			j.Image = strings.TrimPrefix(jc.image, "docker://")
		}
		if jc.cred != nil {
			jc.cred.Registry = executors.RegistryHost(j.Image)
			j.RegistryAuth = append(j.RegistryAuth, *jc.cred)
		}
		// The user is in the container's configuration, where no
		// secret may be.
		if containsSecret(jc.user, secrets) {
			add("container.options --user: holds a secret's value")
		} else {
			j.User = jc.user
		}
		j.ShmSize = jc.shm
		cenv := jc.env
		// container.env is the container's own environment: every step
		// has it, under the job's env (which wins), and it is not in the
		// env context.
		for _, kv := range cenv {
			if _, set := jobEnv.Get(kv.Key); set {
				continue
			}
			if !job.ValidVarName(kv.Key) {
				add("container.env %q: not a valid variable name", kv.Key)
				continue
			}
			j.Variables = append(j.Variables, job.Variable{Key: kv.Key, Value: kv.Value, Raw: true,
				Masked: containsSecret(kv.Value, secrets), Container: true})
		}
	}
	if s := m.JobServiceContainers; s != nil && s.Type != TokenNull {
		env.Contexts["env"] = jobEnv
		svcs, auths, err := serviceContainers(s, env, secrets)
		if err != nil {
			add("services: %v", err)
		}
		j.Services = svcs
		j.RegistryAuth = append(j.RegistryAuth, auths...)
	}

	// defaults.run applies to run steps that set no shell or directory.
	var defShell, defDir string
	for _, d := range m.Defaults {
		run := d.Get("run")
		if run == nil {
			continue
		}
		env.Contexts["env"] = jobEnv
		if t := run.Get("shell"); t != nil {
			v, err := evalToken(t, env)
			if err != nil {
				add("defaults.run.shell: %v", err)
			}
			defShell = expr.String(v)
		}
		if t := run.Get("working-directory"); t != nil {
			v, err := evalToken(t, env)
			if err != nil {
				add("defaults.run.working-directory: %v", err)
			}
			defDir = expr.String(v)
		}
	}

	names := map[string]int{}
	for i := range m.Steps {
		s, serrs := m.convertStep(i, defShell, defDir, env)
		errs = append(errs, serrs...)
		if s == nil {
			continue
		}
		names[s.Name]++
		if n := names[s.Name]; n > 1 {
			s.Name = fmt.Sprintf("%s (%d)", s.Name, n)
		}
		j.Steps = append(j.Steps, *s)
	}
	if out := m.JobOutputs; out != nil && out.Type == TokenMapping {
		for _, e := range out.Map {
			k, _ := e.Key.Literal()
			v, ok := e.Value.Template()
			if !ok {
				add("outputs %s: not a string", k)
				continue
			}
			j.Outputs = append(j.Outputs, job.KV{Key: k, Value: v})
		}
	}
	if tok := m.JobToken(); tok != "" {
		j.ServiceCredentials = append(j.ServiceCredentials, job.ServiceCredential{
			Name: jobTokenCredential, Surrogate: jobTokenSurrogate(tok), Value: tok, Hosts: m.jobTokenHosts()})
	}
	if len(errs) == 0 {
		check := *j
		if check.Image == "" {
			check.Image = "runner-default"
		}
		if err := check.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("converting GitHub job %s: %w", m.JobID, errors.Join(errs...))
	}
	return j, nil
}

func (m *AgentJobRequestMessage) convertStep(i int, defShell, defDir string, env *expr.Env) (*job.Step, []error) {
	ms := &m.Steps[i]
	var errs []error
	s := &job.Step{ID: ms.ContextName, Ref: ms.ID, If: ms.Condition, When: job.OnSuccess}
	where := func() string {
		if s.Name != "" {
			return fmt.Sprintf("step %d (%s)", i+1, s.Name)
		}
		return fmt.Sprintf("step %d", i+1)
	}
	add := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{where()}, a...)...))
	}
	s.Name = m.stepName(ms, s, env) // the display name, if it has one, for messages
	if !ms.IsAction() {
		add("step type %q is not supported", ms.Type.raw)
		return nil, errs
	}
	if ms.Enabled != nil && !bool(*ms.Enabled) {
		return nil, nil
	}
	switch ms.Reference.Kind() {
	case RefScript:
		s.Kind = job.StepRun
		script, ok := ms.Inputs.Get("script").Template()
		if !ok || strings.TrimSpace(script) == "" {
			add("run: no script")
		}
		s.Run = script
		s.Shell, _ = ms.Inputs.Get("shell").Template()
		s.WorkingDirectory, _ = ms.Inputs.Get("workingDirectory").Template()
		if s.Shell == "" {
			s.Shell = defShell
		}
		if s.WorkingDirectory == "" {
			s.WorkingDirectory = defDir
		}
	case RefRepository:
		s.Kind = job.StepUses
		r := ms.Reference
		switch {
		case strings.EqualFold(r.RepositoryType, "self"):
			s.Uses = r.Path
			if !strings.HasPrefix(s.Uses, "./") {
				s.Uses = "./" + strings.TrimPrefix(s.Uses, "/")
			}
		default:
			if r.Name == "" || r.Ref == "" {
				add("uses: repository action without name or ref")
			}
			s.Uses = r.Name
			if p := strings.Trim(r.Path, "/"); p != "" {
				s.Uses += "/" + p
			}
			s.Uses += "@" + r.Ref
		}
	case RefContainerRegistry:
		s.Kind = job.StepUses
		s.Uses = "docker://" + strings.TrimPrefix(ms.Reference.Image, "docker://")
	default:
		add("reference type %q is not supported", ms.Reference.Kind())
		return nil, errs
	}
	if s.Kind == job.StepUses && ms.Inputs != nil && ms.Inputs.Type == TokenMapping {
		for _, e := range ms.Inputs.Map {
			k, _ := e.Key.Literal()
			v, ok := e.Value.Template()
			if !ok {
				add("with %s: not a string", k)
				continue
			}
			s.With = append(s.With, job.KV{Key: k, Value: v})
		}
	}
	if ms.Environment != nil && ms.Environment.Type == TokenMapping {
		for _, e := range ms.Environment.Map {
			k, _ := e.Key.Literal()
			v, ok := e.Value.Template()
			if !ok {
				add("env %s: not a string", k)
				continue
			}
			s.Env = append(s.Env, job.KV{Key: k, Value: v})
		}
	}
	s.Name = m.stepName(ms, s, env)
	// Expressions that cannot parse fail the job before anything runs.
	if s.If != "" {
		if _, err := expr.Parse(s.If); err != nil {
			add("if: %v", err)
		}
	}
	check := func(field, tmpl string) {
		if err := expr.CheckTemplate(tmpl); err != nil {
			add("%s: %v", field, err)
		}
	}
	check("run", s.Run)
	check("shell", s.Shell)
	check("working-directory", s.WorkingDirectory)
	for _, kv := range s.With {
		check("with "+kv.Key, kv.Value)
	}
	for _, kv := range s.Env {
		check("env "+kv.Key, kv.Value)
	}
	if t := ms.ContinueOnError; t != nil && t.Type != TokenNull {
		if t.Type == TokenExpression {
			s.ContinueOnError, _ = t.Template()
		} else {
			lit, _ := t.Literal()
			s.AllowFailure = expr.Truthy(literalValue(t, lit))
		}
	}
	if t := ms.TimeoutInMinutes; t != nil && t.Type != TokenNull {
		if t.Type == TokenExpression {
			s.TimeoutMinutes, _ = t.Template()
		} else {
			lit, _ := t.Literal()
			d, err := stepTimeout(literalValue(t, lit))
			if err != nil {
				add("timeout-minutes: %v", err)
			}
			s.Timeout = d
		}
	}
	return s, errs
}

// stepName is the step's display name: its name: (evaluated now, with
// the job-level contexts) or GitHub's default "Run <script|action>".
func (m *AgentJobRequestMessage) stepName(ms *Step, s *job.Step, env *expr.Env) string {
	name := ms.DisplayName
	if t := ms.DisplayNameToken; t != nil && t.Type != TokenNull {
		if v, err := evalToken(t, env); err == nil {
			name = expr.String(v)
		}
	}
	if strings.TrimSpace(name) == "" {
		switch s.Kind {
		case job.StepScript:
			return ""
		case job.StepRun:
			first, _, _ := strings.Cut(strings.TrimSpace(s.Run), "\n")
			name = "Run " + first
		default:
			name = "Run " + s.Uses
		}
	}
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, name)
	if len(name) > 100 {
		name = name[:100]
	}
	return strings.TrimSpace(name)
}

// stepTimeout truncates minutes to an integer as GitHub does (0.5 is no
// timeout).
func stepTimeout(v any) (time.Duration, error) {
	f := expr.String(v)
	n, ok := v.(float64)
	if !ok {
		return 0, fmt.Errorf("%q is not a number", f)
	}
	n = math.Trunc(n)
	switch {
	case n != n || n < 0:
		return 0, fmt.Errorf("%s is not a positive number", f)
	case n > 60*24*35:
		return 0, fmt.Errorf("%s minutes is too long", f)
	}
	return time.Duration(n) * time.Minute, nil
}

func literalValue(t *TemplateToken, lit string) any {
	switch t.Type {
	case TokenBoolean:
		return t.Bool
	case TokenNumber:
		return t.Num
	}
	return lit
}

// evalToken evaluates a scalar token: literals as themselves, expressions
// with env.
func evalToken(t *TemplateToken, env *expr.Env) (any, error) {
	if t == nil {
		return nil, nil
	}
	switch t.Type {
	case TokenExpression:
		return expr.Evaluate(t.Expr, env)
	case TokenNull:
		return nil, nil
	case TokenSequence, TokenMapping, TokenInsert:
		return nil, fmt.Errorf("a %s is not allowed here", tokenTypeName(t.Type))
	}
	lit, _ := t.Literal()
	return literalValue(t, lit), nil
}

func tokenTypeName(t TokenType) string {
	switch t {
	case TokenSequence:
		return "sequence"
	case TokenMapping:
		return "mapping"
	case TokenInsert:
		return "${{ insert }}"
	}
	return "value"
}

// jobContainer is what a container: says.
type jobContainer struct {
	image string
	env   []job.KV
	cred  *job.RegistryAuth // without a registry: the caller knows the image
	user  string            // options' -u/--user
	shm   int64             // options' --shm-size
}

// containerImage reads a container: a string (the image) or a mapping
// with image, env, options (their -e/--env join env) and credentials;
// anything else it could say is refused by name.
func containerImage(c *TemplateToken, env *expr.Env) (jobContainer, error) {
	var jc jobContainer
	if c.Type != TokenMapping {
		v, err := evalToken(c, env)
		jc.image = expr.String(v)
		return jc, err
	}
	for _, e := range c.Map {
		k, _ := e.Key.Literal()
		switch strings.ToLower(k) {
		case "image":
			v, err := evalToken(e.Value, env)
			if err != nil {
				return jc, err
			}
			jc.image = expr.String(v)
		case "env":
			if e.Value == nil || e.Value.Type == TokenNull {
				continue
			}
			if e.Value.Type != TokenMapping {
				return jc, fmt.Errorf("container.env: want a mapping")
			}
			for _, kv := range e.Value.Map {
				key, _ := kv.Key.Literal()
				v, err := evalToken(kv.Value, env)
				if err != nil {
					return jc, fmt.Errorf("container.env.%s: %w", key, err)
				}
				jc.env = append(jc.env, job.KV{Key: key, Value: expr.String(v)})
			}
		case "credentials":
			a, err := registryCredentials(e.Value, env)
			if err != nil {
				return jc, err
			}
			jc.cred = a
		case "options":
			v, err := evalToken(e.Value, env)
			if err != nil {
				return jc, fmt.Errorf("container.options: %w", err)
			}
			o, err := jobContainerOptions(expr.String(v))
			if err != nil {
				return jc, fmt.Errorf("container.options: %w", err)
			}
			jc.env, jc.user, jc.shm = append(jc.env, o.env...), o.user, o.shm
		default:
			if e.Value != nil && e.Value.Type != TokenNull {
				return jc, fmt.Errorf("container.%s is not supported by Airlock", k)
			}
		}
	}
	return jc, nil
}

// registryCredentials reads credentials: {username, password}. Errors
// never hold the values.
func registryCredentials(t *TemplateToken, env *expr.Env) (*job.RegistryAuth, error) {
	if t == nil || t.Type == TokenNull {
		return nil, nil
	}
	if t.Type != TokenMapping {
		return nil, errors.New("credentials: want a mapping with username and password")
	}
	a := &job.RegistryAuth{}
	for _, kv := range t.Map {
		key, _ := kv.Key.Literal()
		v, err := evalToken(kv.Value, env)
		if err != nil {
			return nil, fmt.Errorf("credentials.%s: %w", key, err)
		}
		switch strings.ToLower(key) {
		case "username":
			a.Username = expr.String(v)
		case "password":
			a.Password = expr.String(v)
		default:
			return nil, fmt.Errorf("credentials.%s is not supported by Airlock (want username and password)", key)
		}
	}
	if a.Username == "" && a.Password == "" {
		return nil, nil // e.g. both from secrets this repository lacks: anonymous, as on GitHub
	}
	if a.Username == "" || a.Password == "" {
		return nil, errors.New("credentials: want both username and password")
	}
	return a, nil
}

// jobID is prefix-guid, hashed down when longer than job ids may be.
func jobID(prefix, id string) string {
	if prefix == "" {
		prefix = "github"
	}
	s := prefix + "-" + id
	if len(s) <= 64 {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	p := prefix
	if len(p) > 40 {
		p = p[:40]
	}
	return p + "-" + hex.EncodeToString(sum[:])[:20]
}

func refName(gh *ContextData) string {
	if n := gh.StringAt("ref_name"); n != "" {
		return n
	}
	r := gh.StringAt("ref")
	for _, p := range []string{"refs/heads/", "refs/tags/"} {
		r = strings.TrimPrefix(r, p)
	}
	return r
}

// isFork reports whether the job runs for a change from another
// repository: a pull_request* or pull_request_target event whose head
// repository is a fork or not the repository itself.
func isFork(gh *ContextData) bool {
	ev := gh.StringAt("event_name")
	if !strings.HasPrefix(ev, "pull_request") {
		return false
	}
	head := gh.Get("event").Get("pull_request").Get("head").Get("repo")
	if head == nil {
		return ev == "pull_request_target" // no head repo known: assume the worst
	}
	if head.StringAt("fork") == "true" {
		return true
	}
	full := head.StringAt("full_name")
	return full != "" && !strings.EqualFold(full, gh.StringAt("repository"))
}

func containsSecret(v string, secrets map[string]string) bool {
	for _, s := range secrets {
		if len(s) >= 4 && strings.Contains(v, s) {
			return true
		}
	}
	return false
}

// changeBase is the commit a change starts from, for the leak scan: a pull
// request's base, a push's "before" (all zeros for a new branch, which
// the scan treats as the head's own commit).
func changeBase(gh *ContextData) string {
	if b := gh.StringAt("event", "pull_request", "base", "sha"); b != "" {
		return b
	}
	return gh.StringAt("event", "before")
}

// serviceContainers maps the job's services: to service containers in the
// job's own network namespace (the runner starts them hardened, like the
// job), reached by their key as a host name, whose health check the
// steps wait for. options may set the health check, the entrypoint and
// variables (applyServiceOptions); credentials pull its image. Keys
// Airlock cannot honour there are refused by name: volumes, other
// options, and ports that remap (the job reaches a service on its own
// ports).
func serviceContainers(t *TemplateToken, env *expr.Env, secrets map[string]string) ([]job.Service, []job.RegistryAuth, error) {
	if t.Type == TokenSequence && len(t.Seq) == 0 {
		return nil, nil, nil
	}
	if t.Type != TokenMapping {
		return nil, nil, fmt.Errorf("want a mapping of service names to containers")
	}
	var out []job.Service
	var auths []job.RegistryAuth
	var errs []error
	for _, e := range t.Map {
		name, _ := e.Key.Literal()
		// GitHub waits for a service's health check before the steps.
		svc := job.Service{Aliases: []string{name}, WaitHealthy: true}
		if e.Value == nil || e.Value.Type != TokenMapping {
			jc, err := containerImage(e.Value, env)
			if err != nil || jc.image == "" {
				errs = append(errs, fmt.Errorf("%s: want an image or a mapping with image (%v)", name, err))
				continue
			}
			svc.Image = jc.image
			out = append(out, svc)
			continue
		}
		var cred *job.RegistryAuth
		for _, f := range e.Value.Map {
			k, _ := f.Key.Literal()
			switch strings.ToLower(k) {
			case "image":
				v, err := evalToken(f.Value, env)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s.image: %w", name, err))
				}
				svc.Image = strings.TrimPrefix(expr.String(v), "docker://")
			case "credentials":
				a, err := registryCredentials(f.Value, env)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s.%w", name, err))
				}
				cred = a
			case "env":
				if f.Value == nil || f.Value.Type != TokenMapping {
					continue
				}
				for _, kv := range f.Value.Map {
					key, _ := kv.Key.Literal()
					v, err := evalToken(kv.Value, env)
					if err != nil || !job.ValidVarName(key) {
						errs = append(errs, fmt.Errorf("%s.env.%s: not a valid variable (%v)", name, key, err))
						continue
					}
					val := expr.String(v)
					// A secret (a database password from secrets.*) is
					// given to the service's process, never in its
					// container's configuration.
					svc.Variables = append(svc.Variables, job.Variable{Key: key, Value: val, Raw: true, Masked: containsSecret(val, secrets)})
				}
			case "options":
				v, err := evalToken(f.Value, env)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s.options: %w", name, err))
					continue
				}
				opts := expr.String(v)
				if containsSecret(opts, secrets) {
					// Options become container configuration.
					errs = append(errs, fmt.Errorf("%s.options: holds a secret; Airlock never puts one in a container's configuration (give it in env:)", name))
					continue
				}
				if err := applyServiceOptions(&svc, opts); err != nil {
					errs = append(errs, fmt.Errorf("%s.options: %w", name, err))
				}
			case "ports":
				if f.Value == nil || f.Value.Type != TokenSequence {
					continue
				}
				for _, p := range f.Value.Seq {
					v, err := evalToken(p, env)
					host, ctr, remap := strings.Cut(expr.String(v), ":")
					if err != nil || (remap && host != ctr) {
						errs = append(errs, fmt.Errorf("%s.ports %q: the job reaches a service on its own ports; remapping them is not supported by Airlock", name, expr.String(v)))
					}
				}
			default:
				if f.Value != nil && f.Value.Type != TokenNull {
					errs = append(errs, fmt.Errorf("%s.%s is not supported by Airlock", name, k))
				}
			}
		}
		if svc.Image == "" {
			errs = append(errs, fmt.Errorf("%s: no image", name))
			continue
		}
		if cred != nil {
			cred.Registry = executors.RegistryHost(svc.Image)
			auths = append(auths, *cred)
		}
		out = append(out, svc)
	}
	return out, auths, errors.Join(errs...)
}
