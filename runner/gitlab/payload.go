package gitlab

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// JobResponse is GitLab's job payload (POST /jobs/request, 201). Fields the
// runner needs beyond the normalized job.Job (job token, git details,
// features, artifacts) are read from here.
type JobResponse struct {
	ID            int64                      `json:"id"`
	Token         string                     `json:"token"` // job token: a secret
	AllowGitFetch bool                       `json:"allow_git_fetch"`
	JobInfo       JobInfo                    `json:"job_info"`
	GitInfo       GitInfo                    `json:"git_info"`
	RunnerInfo    RunnerInfo                 `json:"runner_info"`
	Variables     []JobVariable              `json:"variables"`
	Steps         []JobStep                  `json:"steps"`
	Hooks         []JobHook                  `json:"hooks"`
	Image         JobImage                   `json:"image"`
	Services      []JobImage                 `json:"services"`
	Artifacts     []JobArtifact              `json:"artifacts"`
	Cache         []JobCache                 `json:"cache"`
	Credentials   []JobCredential            `json:"credentials"`
	Dependencies  []JobDependency            `json:"dependencies"`
	Features      JobFeatures                `json:"features"`
	Secrets       map[string]json.RawMessage `json:"secrets"` // GitLab CI secrets: (Vault, ...); a job with any is refused
	Run           json.RawMessage            `json:"run"`     // CI steps (native step runner), not supported
}

// JobInfo describes the job and its project.
type JobInfo struct {
	ID                 int64   `json:"id"`
	Name               string  `json:"name"`
	Stage              string  `json:"stage"`
	PipelineID         int64   `json:"pipeline_id"`
	ProjectID          int64   `json:"project_id"`
	ProjectName        string  `json:"project_name"`
	ProjectFullPath    string  `json:"project_full_path"`
	NamespaceID        int64   `json:"namespace_id"`
	RootNamespaceID    int64   `json:"root_namespace_id"`
	UserID             int64   `json:"user_id"`
	TimeInQueueSeconds float64 `json:"time_in_queue_seconds"`
}

// GitInfo says what to check out. RepoURL embeds the job token.
type GitInfo struct {
	RepoURL          string   `json:"repo_url"`
	Ref              string   `json:"ref"`
	SHA              string   `json:"sha"`
	BeforeSHA        string   `json:"before_sha"`
	RefType          string   `json:"ref_type"` // branch | tag
	Refspecs         []string `json:"refspecs"`
	Depth            int      `json:"depth"`
	RepoObjectFormat string   `json:"repo_object_format"`
	Protected        *bool    `json:"protected"`
}

// RunnerInfo carries the job timeout in seconds.
type RunnerInfo struct {
	Timeout int64 `json:"timeout"`
}

// JobVariable is one job variable; File and Raw are omitted when false.
type JobVariable struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Public bool   `json:"public"`
	Masked bool   `json:"masked"`
	File   bool   `json:"file"`
	Raw    bool   `json:"raw"`
}

// JobStep is script, after_script or release.
type JobStep struct {
	Name         string   `json:"name"`
	Script       []string `json:"script"`
	Timeout      int64    `json:"timeout"`
	When         string   `json:"when"`
	AllowFailure bool     `json:"allow_failure"`
}

// JobHook is a pre/post get_sources script.
type JobHook struct {
	Name   string   `json:"name"`
	Script []string `json:"script"`
}

// JobImage is the job image or a service.
type JobImage struct {
	Name       string   `json:"name"`
	Alias      string   `json:"alias"`
	Command    []string `json:"command"`
	Entrypoint []string `json:"entrypoint"`
	PullPolicy []string `json:"pull_policy"`
	// Variables are a service's own variables.
	Variables []JobVariable `json:"variables"`
	// ExecutorOpts are image:docker: (platform, user); the options of
	// other executors (kubernetes:) do not apply to this one's jobs, as
	// gitlab-runner's Docker executor ignores them too.
	ExecutorOpts struct {
		Docker struct {
			Platform string `json:"platform"`
			User     string `json:"user"`
		} `json:"docker"`
	} `json:"executor_opts"`
}

// JobArtifact is an artifacts: entry of the job.
type JobArtifact struct {
	Name           string   `json:"name"`
	Untracked      bool     `json:"untracked"`
	Paths          []string `json:"paths"`
	Exclude        []string `json:"exclude"`
	When           string   `json:"when"`
	ArtifactType   string   `json:"artifact_type"`
	ArtifactFormat string   `json:"artifact_format"`
	ExpireIn       string   `json:"expire_in"`
}

// JobCache is a cache: entry of the job.
type JobCache struct {
	Key          string   `json:"key"`
	Untracked    bool     `json:"untracked"`
	Policy       string   `json:"policy"`
	Paths        []string `json:"paths"`
	When         string   `json:"when"`
	FallbackKeys []string `json:"fallback_keys"`
}

// JobCredential is a registry credential (password is the job token).
type JobCredential struct {
	Type     string `json:"type"`
	URL      string `json:"url"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// JobDependency is an earlier job whose artifacts this one needs.
type JobDependency struct {
	ID            int64  `json:"id"`
	Name          string `json:"name"`
	Token         string `json:"token"`
	ArtifactsFile struct {
		Filename string `json:"filename"`
		Size     int64  `json:"size"`
	} `json:"artifacts_file"`
}

// JobFeatures are the job's protocol options.
type JobFeatures struct {
	TraceSections     bool     `json:"trace_sections"`
	FailureReasons    []string `json:"failure_reasons"`
	TokenMaskPrefixes []string `json:"token_mask_prefixes"`
}

// String identifies the job without its token or variables, so that
// printing a JobResponse never leaks a secret.
func (r *JobResponse) String() string {
	return fmt.Sprintf("GitLab job %d (%s, %s)", r.ID, r.JobInfo.Name, r.JobInfo.ProjectFullPath)
}

// GoString is String: %#v must not leak either.
func (r *JobResponse) GoString() string { return r.String() }

// ParseJobResponse decodes a job payload. Any problem gives a
// *PayloadError carrying the job id and token when they could be read.
func ParseJobResponse(data []byte) (*JobResponse, error) {
	perr := func(err error) error {
		var head struct {
			ID    int64  `json:"id"`
			Token string `json:"token"`
		}
		// Best effort: a type error elsewhere still fills these.
		_ = json.Unmarshal(data, &head)
		if head.ID <= 0 || !validUTF8([]byte(head.Token)) {
			head.ID, head.Token = 0, ""
		}
		return &PayloadError{ID: head.ID, Token: head.Token, Err: err}
	}
	if len(data) > maxResponseBody {
		return nil, perr(fmt.Errorf("payload of %d bytes is larger than %d", len(data), maxResponseBody))
	}
	if !validUTF8(data) {
		return nil, perr(errors.New("payload is not valid UTF-8"))
	}
	var r JobResponse
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, perr(fmt.Errorf("payload is not a valid job: %w", jsonError(err)))
	}
	if r.ID <= 0 {
		return nil, perr(errors.New("payload has no job id"))
	}
	if r.Token == "" {
		return nil, perr(errors.New("payload has no job token"))
	}
	return &r, nil
}

// jsonError keeps the field path of a type error and drops the value.
func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "(top level)"
		}
		kind := te.Value
		if i := strings.IndexByte(kind, ' '); i > 0 {
			kind = kind[:i] // "number 12" -> "number": never echo values
		}
		return fmt.Errorf("field %s: got JSON %s, want %s", field, kind, te.Type)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("syntax error at byte %d", se.Offset)
	}
	return err
}

// MaskPhrases returns the values the job's output must never show: the job
// token, every masked variable and every credential password.
func (r *JobResponse) MaskPhrases() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	add(r.Token)
	for _, v := range r.Variables {
		if v.Masked {
			add(v.Value)
		}
	}
	for _, c := range r.Credentials {
		add(c.Password)
	}
	// DOCKER_AUTH_CONFIG cannot be masked in GitLab (it is JSON): its
	// passwords and their user:password base64 are masked here.
	if raw, ok := r.variable("DOCKER_AUTH_CONFIG"); ok {
		var cfg dockerAuthConfig
		if json.Unmarshal([]byte(raw), &cfg) == nil {
			for _, en := range cfg.entries() {
				add(en.auth)
				add(cfg.Auths[en.key].Password)
				if !en.badAuth {
					add(en.pass)
				}
			}
		}
	}
	for _, d := range r.Dependencies {
		add(d.Token)
	}
	return out
}
