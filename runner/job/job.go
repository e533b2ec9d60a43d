// Package job defines the normalized job specification that every job
// source (local job files, GitLab, GitHub) produces and every other part of
// Airlock consumes. It is a leaf package: it imports nothing of Airlock's.
package job

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Source names where a job came from. Grants may be restricted to a source.
type Source string

// The job sources Airlock knows.
const (
	SourceLocal  Source = "local"
	SourceGitLab Source = "gitlab"
	SourceGitHub Source = "github"
)

// Valid reports whether s is a known source.
func (s Source) Valid() bool {
	switch s {
	case SourceLocal, SourceGitLab, SourceGitHub:
		return true
	}
	return false
}

// When says under which outcome of the previous steps a step runs.
type When string

// Step conditions, with GitLab's meaning.
const (
	OnSuccess When = "on_success" // only while every earlier step succeeded
	OnFailure When = "on_failure" // only after an earlier step failed
	Always    When = "always"     // whatever happened, even after cancel or timeout; its exit code does not decide the job (GitLab's after_script)
)

// Valid reports whether w is a known condition.
func (w When) Valid() bool {
	switch w {
	case OnSuccess, OnFailure, Always:
		return true
	}
	return false
}

// Delivery says how a credential reaches the job.
type Delivery string

// Credential deliveries.
const (
	DeliverEnv   Delivery = "env"   // environment variable at exec time
	DeliverFile  Delivery = "file"  // file on a read-only tmpfs; its path in the variable
	DeliverProxy Delivery = "proxy" // a surrogate that only the job's gateway redeems
	// DeliverMTLS: the job gets nothing; its gateway presents the client
	// certificate upstream for the bound hosts.
	DeliverMTLS Delivery = "mtls"
)

// Valid reports whether d is a known delivery ("" means the grant decides).
func (d Delivery) Valid() bool {
	switch d {
	case "", DeliverEnv, DeliverFile, DeliverProxy, DeliverMTLS:
		return true
	}
	return false
}

// Job is one unit of work: a container image and the steps to run in it,
// with the identity (repo, ref, environment) that decides what it may use.
type Job struct {
	// ID is unique across every coordinator instance the agent serves
	// (e.g. "gitlab-1a2b3c4d-1234"): it keys runtime directories, audit
	// trails, leases and network names.
	ID     string
	Source Source
	// Instance is the coordinator instance the job came from (GitLab's
	// URL); grants may be restricted to one. Empty for local jobs.
	Instance string
	// CoordinatorID is the job's id at its coordinator (GitLab's numeric
	// id), for reports and logs; empty when ID is the only id.
	CoordinatorID string
	Name          string // human-readable job name, e.g. GitLab's job_info.name
	Repo          string // full path, e.g. "group/project"
	Ref           string // branch or tag name
	SHA           string
	Protected     bool // ref is protected (GitLab) / a protected branch
	Environment   string

	Image string
	// Pull is the job's pull policies for its image, tried in turn while
	// the image cannot be had (GitLab's image:pull_policy); empty: the
	// runner's. The runner takes those of them its admin allows.
	Pull []string
	// User runs the job's container and steps (GitLab's
	// image:docker:user); "": the runner's, else the image's.
	User string
	// StepEntrypoint wraps every script step as gitlab-runner's build
	// container's ENTRYPOINT wraps its shell: the step's shell command is
	// appended to it as arguments, so it must exec them (a wrapper script
	// ending in exec "$@", tini --). EntrypointFromImage: the image's own
	// ENTRYPOINT, read when the job starts (GitLab's default). Neither: the
	// steps run in the shell directly.
	StepEntrypoint      []string
	EntrypointFromImage bool
	// ShmSize is the size of /dev/shm the job asks for in bytes (GitHub's
	// container.options --shm-size); 0: the runner's. At most the
	// container's memory limit, which the executor checks.
	ShmSize int64
	// WorkDir is where the sources are and the steps run (CI_PROJECT_DIR;
	// GitLab's GIT_CLONE_PATH), when not the runner's work directory: an
	// absolute, clean path below it.
	WorkDir string

	Steps     []Step
	Variables []Variable
	Secrets   []SecretRequest
	// ServiceCredentials are the coordinator's own credentials that the
	// job's code uses against the coordinator's services (GitHub's
	// ACTIONS_RUNTIME_TOKEN), held by the job only as surrogates.
	ServiceCredentials []ServiceCredential
	Egress             []string // declared egress entries, see package netpolicy
	Timeout            time.Duration

	// Event is what triggered the job (GitHub's event_name, e.g. "push",
	// "pull_request"); "" where the source has no such notion.
	Event string
	// Fork is set when the job runs code from a fork (a pull request from
	// another repository, pull_request_target): grants deny it
	// credentials unless they allow forks.
	Fork bool
	// Outputs are the job's outputs (GitHub jobs.<id>.outputs), templates
	// evaluated by the coordinator's step driver after the last step.
	Outputs []KV
	// BeforeSHA is the commit the change starts from, so that what it
	// adds (BeforeSHA..SHA) is scanned for leaked credentials before any
	// step: GitLab's before_sha (for a merge request its diff base,
	// CI_MERGE_REQUEST_DIFF_BASE_SHA), GitHub's push "before" or the pull
	// request's base. Empty or all zeros (a new branch): SHA's own commit.
	BeforeSHA string
	// Services run beside the job in its network namespace (GitLab's
	// services:), reachable by their aliases on 127.0.0.1.
	Services []Service
	// RegistryAuth are the job's credentials for pulling its image and
	// its services' (GitLab's registry credentials and
	// DOCKER_AUTH_CONFIG, GitHub's container and service credentials),
	// by registry host; for one host the last one wins. Their passwords
	// are masked.
	RegistryAuth []RegistryAuth
}

// RegistryAuth is a registry credential of a job.
type RegistryAuth struct {
	Registry           string // host[:port], as in image references
	Username, Password string
}

// Service is a container started beside the job.
type Service struct {
	Image string
	// Pull is the service's pull policies, as Job.Pull for its image.
	Pull []string
	// Aliases are the host names the job reaches it by.
	Aliases []string
	// Entrypoint and Command replace the image's when not nil.
	Entrypoint, Command []string
	// Variables are the service's own (the runner adds the job's public
	// ones, never masked ones or credentials).
	Variables []Variable
	// Health replaces or tunes the image's health check (GitHub's
	// --health-* options); nil keeps the image's.
	Health *HealthCheck
	// WaitHealthy: the job's steps wait until a service with a health
	// check (its own or its image's) is healthy, and the job fails when
	// it turns unhealthy (GitHub's behaviour; GitLab only dials ports).
	WaitHealthy bool
}

// HealthCheck is a service's health check, run by the engine inside the
// service's container (Docker's HEALTHCHECK). A zero field keeps the
// image's value.
type HealthCheck struct {
	// Test is ["CMD-SHELL", command], ["CMD", args...] or ["NONE"].
	Test                           []string
	Interval, Timeout, StartPeriod time.Duration
	Retries                        int
}

// StepKind says how a step is run.
type StepKind string

// Step kinds. Run and uses steps are run by a coordinator's StepDriver;
// their template fields may hold ${{ }} expressions it evaluates.
const (
	StepScript StepKind = ""     // Script lines in the runner's POSIX shell (GitLab, local)
	StepRun    StepKind = "run"  // GitHub run: Run in Shell
	StepUses   StepKind = "uses" // GitHub uses: the action Uses with With
)

// KV is an ordered key and value.
type KV struct {
	Key   string
	Value string
}

// Step is a named script run by one exec in the job's container, or a
// GitHub run/uses step run by a StepDriver.
type Step struct {
	Name         string
	Script       []string
	When         When
	Timeout      time.Duration // 0: bounded only by the job's timeout
	AllowFailure bool

	Kind StepKind
	// ID is the step's id in its workflow (steps.<id>); Ref the
	// coordinator's id for reporting it (GitHub's step id).
	ID, Ref string
	// If is the step's condition (an expression; "" = success()).
	If string
	// Run is a run step's script (a template); Shell its shell: bash,
	// sh, python or a command line with {0}; "" = bash -e {0} when the
	// image has bash, else sh -e {0}.
	Run, Shell string
	// Uses is a uses step's action: owner/repo[/path]@ref, ./path (in
	// the workspace) or docker://image; With its inputs (templates).
	Uses string
	With []KV
	// Env is the step's own environment (templates), after the job's.
	Env []KV
	// WorkingDirectory is relative to the job's working directory.
	WorkingDirectory string
	// ContinueOnError and TimeoutMinutes hold templates a driver
	// evaluates when the source sent expressions; literal values are in
	// AllowFailure and Timeout.
	ContinueOnError, TimeoutMinutes string
}

// Variable is a job variable as the source gave it.
type Variable struct {
	Key    string
	Value  string
	Masked bool // must be masked in output
	File   bool // delivered as a file whose path is the variable's value
	Raw    bool // no variable expansion
	Public bool
	// Container: of the job container's own environment (GitHub's
	// container.env): in every step's environment, not in the env
	// context of expressions.
	Container bool
}

// SecretRequest is a credential the job declares it needs. Whether it gets
// it is decided by the admin's grants, never by the job.
type SecretRequest struct {
	Name     string   // secret name in the store
	Var      string   // variable the job reads it from; default derived from Name
	Delivery Delivery // requested delivery; "" = as granted
}

// VarName is the variable the credential is delivered in.
func (s SecretRequest) VarName() string {
	if s.Var != "" {
		return s.Var
	}
	return DefaultVarName(s.Name)
}

// DefaultVarName derives an environment variable name from a secret name:
// upper case, every character outside [A-Z0-9_] replaced by '_'.
func DefaultVarName(name string) string {
	b := []byte(strings.ToUpper(name))
	for i, c := range b {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			b[i] = '_'
		}
	}
	if len(b) > 0 && b[0] >= '0' && b[0] <= '9' {
		return "_" + string(b)
	}
	return string(b)
}

var (
	varNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	secretNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	jobIDRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
)

// ValidVarName reports whether s can name an environment variable.
func ValidVarName(s string) bool { return varNameRE.MatchString(s) }

// ValidSecretName reports whether s can name a secret.
func ValidSecretName(s string) bool { return secretNameRE.MatchString(s) }

// Validate returns every problem of the job at once, joined.
// ServiceCredential is a coordinator's credential delivered by surrogate:
// the job holds only Surrogate (the coordinator's conversion or step
// driver puts it where the job's code looks for the credential); the
// egress gateway swaps it for Value in the Authorization header (and in
// Headers and Query) of requests to Hosts (names; others are not bound)
// while the job runs, and nothing redeems it after. Both are masked.
type ServiceCredential struct {
	Name      string // for the audit trail, e.g. "github-job-token"
	Surrogate string
	Value     string
	Hosts     []string
	// Headers and Query are the further headers and URL query parameters
	// the service takes the credential in (GitLab: JOB-TOKEN, job_token).
	Headers []string
	Query   []string
	// FormBody: the service takes it in a form body too (GitLab's
	// pipeline trigger, token=$CI_JOB_TOKEN).
	FormBody bool
	// PlainHTTP: the coordinator is reached over plain HTTP, so the
	// gateway swaps the surrogate on plain-HTTP requests too (the runner
	// sends the value there in clear anyway).
	PlainHTTP bool
}

// AddBindableHost appends to hosts the host name of raw (a URL, or
// host[:port]) in lower case, unless it is empty, an address (the
// gateway binds service credentials to names only) or already there.
func AddBindableHost(hosts []string, raw string) []string {
	if raw == "" {
		return hosts
	}
	if !strings.Contains(raw, "://") {
		raw = "//" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return hosts
	}
	h := strings.ToLower(u.Hostname())
	if _, err := netip.ParseAddr(h); err == nil || h == "" || slices.Contains(hosts, h) {
		return hosts
	}
	return append(hosts, h)
}

// minServiceSurrogate keeps a surrogate long enough to be unguessable
// and maskable.
const minServiceSurrogate = 16

func (j *Job) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if !jobIDRE.MatchString(j.ID) {
		add("id %q: must be 1-64 characters of letters, digits, '.', '_' or '-'", j.ID)
	}
	if !j.Source.Valid() {
		add("source %q: must be one of local, gitlab, github", j.Source)
	}
	if strings.TrimSpace(j.Image) == "" {
		add("image: required")
	}
	if j.Timeout < 0 {
		add("timeout: must not be negative")
	}
	if j.User != "" && !ValidUser(j.User) {
		add("user: must be a user name or uid, with an optional :group or :gid")
	}
	if len(j.StepEntrypoint) > 0 {
		if j.EntrypointFromImage {
			add("entrypoint: either given or the image's, not both")
		}
		if strings.TrimSpace(j.StepEntrypoint[0]) == "" {
			add("entrypoint: its command is empty")
		}
		for i, a := range j.StepEntrypoint {
			if strings.ContainsRune(a, 0) {
				add("entrypoint[%d]: contains a NUL byte", i)
			}
		}
	}
	if j.ShmSize < 0 {
		add("shm_size: must not be negative")
	}
	if j.WorkDir != "" && (!path.IsAbs(j.WorkDir) || path.Clean(j.WorkDir) != j.WorkDir || j.WorkDir == "/" || strings.ContainsRune(j.WorkDir, 0)) {
		add("work dir %q: must be an absolute, clean path below /", j.WorkDir)
	}
	if len(j.Steps) == 0 {
		add("steps: at least one step is required")
	}
	names := map[string]bool{}
	ids := map[string]bool{}
	hasMain := false
	for i, s := range j.Steps {
		where := fmt.Sprintf("steps[%d]", i)
		if s.Name == "" {
			add("%s.name: required", where)
		} else if names[s.Name] {
			add("%s.name %q: duplicate step name", where, s.Name)
		}
		names[s.Name] = true
		if s.ID != "" {
			if ids[s.ID] {
				add("%s (%s).id %q: duplicate step id", where, s.Name, s.ID)
			}
			ids[s.ID] = true
		}
		switch s.Kind {
		case StepScript:
			if len(s.Script) == 0 {
				add("%s (%s).script: must have at least one line", where, s.Name)
			}
		case StepRun:
			if strings.TrimSpace(s.Run) == "" {
				add("%s (%s).run: empty script", where, s.Name)
			}
			if s.Uses != "" {
				add("%s (%s): a step has either run or uses, not both", where, s.Name)
			}
		case StepUses:
			if strings.TrimSpace(s.Uses) == "" {
				add("%s (%s).uses: required", where, s.Name)
			}
			if s.Run != "" {
				add("%s (%s): a step has either run or uses, not both", where, s.Name)
			}
		default:
			add("%s (%s).kind %q: must be run, uses or empty (script)", where, s.Name, s.Kind)
		}
		if s.Kind != StepScript && len(s.Script) > 0 {
			add("%s (%s).script: only for script steps", where, s.Name)
		}
		for _, kv := range s.Env {
			if !ValidVarName(kv.Key) {
				add("%s (%s).env %q: not a valid variable name", where, s.Name, kv.Key)
			}
		}
		if !s.When.Valid() {
			add("%s (%s).when %q: must be on_success, on_failure or always", where, s.Name, s.When)
		}
		if s.When != Always && s.When != OnFailure {
			hasMain = true
		}
		if s.Timeout < 0 {
			add("%s (%s).timeout: must not be negative", where, s.Name)
		}
	}
	if len(j.Steps) > 0 && !hasMain {
		add("steps: no step runs on success; a job needs a script")
	}
	seenVar := map[string]bool{}
	for i, v := range j.Variables {
		if !ValidVarName(v.Key) {
			add("variables[%d] %q: not a valid variable name", i, v.Key)
		}
		seenVar[v.Key] = true
	}
	for i, c := range j.ServiceCredentials {
		where := fmt.Sprintf("service_credentials[%d]", i)
		if !ValidSecretName(c.Name) {
			add("%s %q: not a valid name (letters, digits, '.', '_', '-')", where, c.Name)
		}
		if c.Value == "" || len(c.Surrogate) < minServiceSurrogate || c.Surrogate == c.Value {
			add("%s %s: want a value and a surrogate of at least %d characters that differs from it", where, c.Name, minServiceSurrogate)
		}
	}
	seenSecret := map[string]bool{}
	for i, s := range j.Secrets {
		where := fmt.Sprintf("secrets[%d]", i)
		if !ValidSecretName(s.Name) {
			add("%s %q: not a valid secret name (letters, digits, '.', '_', '-')", where, s.Name)
		}
		if seenSecret[s.Name] {
			add("%s %q: declared twice", where, s.Name)
		}
		seenSecret[s.Name] = true
		if v := s.VarName(); !ValidVarName(v) {
			add("%s (%s).var %q: not a valid variable name", where, s.Name, v)
		} else if seenVar[v] {
			add("%s (%s).var %q: clashes with a job variable of the same name", where, s.Name, v)
		}
		if !s.Delivery.Valid() {
			add("%s (%s).delivery %q: must be env, file or proxy", where, s.Name, s.Delivery)
		}
	}
	for i, e := range j.Egress {
		if strings.TrimSpace(e) == "" {
			add("egress[%d]: empty entry", i)
		}
	}
	return errors.Join(errs...)
}

// Masked returns the values the job's output must never show: every masked
// variable's value and every registry password.
func (j *Job) Masked() []string {
	var out []string
	for _, v := range j.Variables {
		if v.Masked && v.Value != "" {
			out = append(out, v.Value)
		}
	}
	for _, a := range j.RegistryAuth {
		if a.Password != "" {
			out = append(out, a.Password)
		}
	}
	return out
}

// userRE is a user name or uid, with an optional group name or gid.
var userRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$`)

// ValidUser reports whether s can be Job.User: a user name or uid, with
// an optional :group or :gid.
func ValidUser(s string) bool { return userRE.MatchString(s) }

// ShellEntrypoint reports whether an ENTRYPOINT is none, cleared ([""])
// or a plain shell with at most -c/-l: one that adds nothing to a step run
// in a shell.
func ShellEntrypoint(ep []string) bool {
	if len(ep) == 0 || (len(ep) == 1 && ep[0] == "") {
		return true
	}
	if len(ep) > 2 {
		return false
	}
	switch path.Base(ep[0]) {
	case "sh", "bash", "ash", "dash":
	default:
		return false
	}
	if len(ep) == 2 {
		switch ep[1] {
		case "-c", "-l", "-lc", "-ec":
		default:
			return false
		}
	}
	return true
}
