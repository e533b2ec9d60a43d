package github

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// AgentJobRequestMessage is the job message the run service's acquirejob
// answers with (and the pipelines queue's PipelineAgentJobRequest body).
// Keys arrive camelCase and are matched case-insensitively; see
// ../shared/research/github-runner-protocol.md §5. Fields the runner
// evaluates itself stay TemplateTokens.
type AgentJobRequestMessage struct {
	MessageType    string     `json:"messageType"`
	Plan           Plan       `json:"plan"`
	Timeline       Timeline   `json:"timeline"`
	JobID          string     `json:"jobId"`
	JobDisplayName string     `json:"jobDisplayName"`
	JobName        string     `json:"jobName"`
	RequestID      LenientInt `json:"requestId"`
	LockedUntil    string     `json:"lockedUntil"`
	Resources      Resources  `json:"resources"`
	Variables      Variables  `json:"variables"`
	ContextData    ContextMap `json:"contextData"`
	Mask           []MaskHint `json:"mask"`
	// EnvironmentVariables and Defaults are lists of mapping tokens
	// (workflow-level first, then job-level).
	EnvironmentVariables []*TemplateToken    `json:"environmentVariables"`
	Defaults             []*TemplateToken    `json:"defaults"`
	JobContainer         *TemplateToken      `json:"jobContainer"`
	JobServiceContainers *TemplateToken      `json:"jobServiceContainers"`
	JobOutputs           *TemplateToken      `json:"jobOutputs"`
	Steps                []Step              `json:"steps"`
	FileTable            []string            `json:"fileTable"`
	Workspace            json.RawMessage     `json:"workspace,omitempty"`
	ActionsEnvironment   *ActionsEnvironment `json:"actionsEnvironment"`
	BillingOwnerID       string              `json:"billingOwnerId"`
}

// Plan identifies the workflow run (results: workflow_run_backend_id).
type Plan struct {
	ScopeIdentifier string     `json:"scopeIdentifier"`
	PlanType        string     `json:"planType"`
	PlanID          string     `json:"planId"`
	Version         LenientInt `json:"version"`
}

// Timeline is the job's timeline (older pipelines flow).
type Timeline struct {
	ID       string     `json:"id"`
	ChangeID LenientInt `json:"changeId"`
}

// Resources holds the service endpoints of the job.
type Resources struct {
	Endpoints    []Endpoint      `json:"endpoints"`
	Repositories json.RawMessage `json:"repositories,omitempty"`
	Containers   json.RawMessage `json:"containers,omitempty"`
}

// Endpoint is a service connection; SystemVssConnection carries the run
// service URL and the job token.
type Endpoint struct {
	Name          string            `json:"name"`
	URL           string            `json:"url"`
	Authorization Authorization     `json:"authorization"`
	Data          map[string]string `json:"data"`
	IsShared      LenientBool       `json:"isShared"`
	IsReady       LenientBool       `json:"isReady"`
}

// Authorization of an endpoint; the job token is Parameters["AccessToken"].
type Authorization struct {
	Scheme     string            `json:"scheme"`
	Parameters map[string]string `json:"parameters"`
}

// Param returns a parameter by case-insensitive name.
func (a Authorization) Param(name string) string {
	return lookupFold(a.Parameters, name)
}

// DataValue returns an endpoint data entry by case-insensitive name.
func (e *Endpoint) DataValue(name string) string {
	if e == nil {
		return ""
	}
	return lookupFold(e.Data, name)
}

// Variable is one job variable; secrets have IsSecret set.
type Variable struct {
	Value    string      `json:"value"`
	IsSecret LenientBool `json:"isSecret"`
}

// UnmarshalJSON accepts a non-string value as its JSON text.
func (v *Variable) UnmarshalJSON(data []byte) error {
	var w struct {
		Value    json.RawMessage `json:"value"`
		IsSecret LenientBool     `json:"isSecret"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	v.IsSecret = w.IsSecret
	v.Value = ""
	raw := bytes.TrimSpace(w.Value)
	switch {
	case len(raw) == 0 || string(raw) == "null":
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &v.Value); err != nil {
			return err
		}
	default:
		v.Value = string(raw)
	}
	return nil
}

// Variables are the job's variables; names are case-insensitive.
type Variables map[string]Variable

// Get returns a variable by case-insensitive name.
func (vs Variables) Get(name string) (Variable, bool) {
	if v, ok := vs[name]; ok {
		return v, true
	}
	for k, v := range vs {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return Variable{}, false
}

// Value returns a variable's value ("" if absent).
func (vs Variables) Value(name string) string {
	v, _ := vs.Get(name)
	return v.Value
}

// ContextMap is the job message's contextData; names are case-insensitive.
type ContextMap map[string]*ContextData

// Get returns a context by case-insensitive name (nil if absent or null).
func (cm ContextMap) Get(name string) *ContextData {
	if c, ok := cm[name]; ok {
		return c
	}
	for k, c := range cm {
		if strings.EqualFold(k, name) {
			return c
		}
	}
	return nil
}

// MaskHint is a value the runner must mask ("regex" hints carry the job
// token as a plain value in practice).
type MaskHint struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// ActionsEnvironment is the deployment environment of the job.
type ActionsEnvironment struct {
	Name string         `json:"name"`
	URL  *TemplateToken `json:"url"`
}

// Step is one step of the job (an ActionStep).
type Step struct {
	Type             LenientEnum     `json:"type"` // "action" (4)
	ID               string          `json:"id"`   // reported under this id
	Name             string          `json:"name"` // e.g. "__run_2"
	DisplayName      string          `json:"displayName"`
	DisplayNameToken *TemplateToken  `json:"displayNameToken"`
	ContextName      string          `json:"contextName"` // the step's id: in the workflow (steps.<id>)
	Condition        string          `json:"condition"`
	ContinueOnError  *TemplateToken  `json:"continueOnError"`
	TimeoutInMinutes *TemplateToken  `json:"timeoutInMinutes"`
	Enabled          *LenientBool    `json:"enabled"`
	Reference        ActionReference `json:"reference"`
	Inputs           *TemplateToken  `json:"inputs"`
	Environment      *TemplateToken  `json:"environment"`
}

// ActionReference says what a step runs.
type ActionReference struct {
	Type           LenientEnum `json:"type"` // repository (1), containerRegistry (2), script (3)
	Name           string      `json:"name"` // owner/repo of a repository action
	Ref            string      `json:"ref"`
	RepositoryType string      `json:"repositoryType"` // "GitHub" or "self" (a local action)
	Path           string      `json:"path"`
	Image          string      `json:"image"` // containerRegistry
}

// Reference kinds, as LenientEnum normalizes them.
const (
	RefRepository        = "repository"
	RefContainerRegistry = "containerregistry"
	RefScript            = "script"
)

var refNames = map[int64]string{1: RefRepository, 2: RefContainerRegistry, 3: RefScript}

// Kind returns the reference type in lower case ("repository",
// "containerregistry", "script"), mapping the numeric form.
func (r ActionReference) Kind() string {
	return r.Type.Name(refNames)
}

// IsAction reports whether the step's type is "action" (the only kind of
// step GitHub sends to runners).
func (s *Step) IsAction() bool {
	n := s.Type.Name(map[int64]string{4: "action"})
	return n == "action" || n == ""
}

// LenientEnum is an enum GitHub sends either as a name (any case) or as
// its number.
type LenientEnum struct {
	raw string // lower-cased name, or the number's text
	num int64
	isN bool
}

// UnmarshalJSON accepts a string or a number.
func (e *LenientEnum) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	*e = LenientEnum{}
	if string(data) == "null" {
		return nil
	}
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		e.raw = strings.ToLower(s)
		return nil
	}
	var n LenientInt
	if err := n.UnmarshalJSON(data); err != nil {
		return err
	}
	e.num, e.isN, e.raw = int64(n), true, fmt.Sprint(int64(n))
	return nil
}

// MarshalJSON writes the name (or the number it came as).
func (e LenientEnum) MarshalJSON() ([]byte, error) {
	if e.isN {
		return json.Marshal(e.num)
	}
	return json.Marshal(e.raw)
}

// Name returns the lower-cased name, mapping a number through names.
func (e LenientEnum) Name(names map[int64]string) string {
	if e.isN {
		if n, ok := names[e.num]; ok {
			return n
		}
	}
	return e.raw
}

// Enum returns a LenientEnum holding name (for building messages).
func Enum(name string) LenientEnum { return LenientEnum{raw: strings.ToLower(name)} }

// Names of the well-known variables and endpoint fields.
const (
	systemConnection   = "SystemVssConnection"
	varGitHubToken     = "system.github.token"
	varAccessToken     = "system.accessToken"
	varResultsEndpoint = "system.github.results_endpoint"
	varLaunchEndpoint  = "system.github.launch_endpoint"
	varStepDebug       = "ACTIONS_STEP_DEBUG"
	varRunnerDebug     = "ACTIONS_RUNNER_DEBUG"
)

// DecodeJobMessage decodes a job message (a UTF-8 BOM is tolerated) and
// checks the fields every job needs.
func DecodeJobMessage(b []byte) (*AgentJobRequestMessage, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	var m AgentJobRequestMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decoding job message: %w", err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("decoding job message: %w", err)
	}
	return &m, nil
}

func (m *AgentJobRequestMessage) check() error {
	var errs []error
	if m.JobID == "" {
		errs = append(errs, errors.New("jobId: missing"))
	}
	if m.Plan.PlanID == "" {
		errs = append(errs, errors.New("plan.planId: missing"))
	}
	if m.SystemConnection() == nil {
		errs = append(errs, fmt.Errorf("resources.endpoints: no %s", systemConnection))
	}
	return errors.Join(errs...)
}

// SystemConnection returns the SystemVssConnection endpoint, or nil.
func (m *AgentJobRequestMessage) SystemConnection() *Endpoint {
	for i := range m.Resources.Endpoints {
		if strings.EqualFold(m.Resources.Endpoints[i].Name, systemConnection) {
			return &m.Resources.Endpoints[i]
		}
	}
	return nil
}

// JobToken is the job's access token (ACTIONS_RUNTIME_TOKEN; the bearer
// for renewjob, completejob, results and launch).
func (m *AgentJobRequestMessage) JobToken() string {
	if e := m.SystemConnection(); e != nil {
		return e.Authorization.Param("AccessToken")
	}
	return ""
}

// RunServiceURL is the base URL of renewjob/completejob (ends with "/").
func (m *AgentJobRequestMessage) RunServiceURL() string {
	if e := m.SystemConnection(); e != nil {
		return e.URL
	}
	return ""
}

// ResultsURL is the results service endpoint (logs, step summaries).
func (m *AgentJobRequestMessage) ResultsURL() string {
	if v := m.Variables.Value(varResultsEndpoint); v != "" {
		return v
	}
	return m.SystemConnection().DataValue("ResultsServiceUrl")
}

// LaunchURL is the launch service endpoint (action resolution).
func (m *AgentJobRequestMessage) LaunchURL() string {
	return m.Variables.Value(varLaunchEndpoint)
}

// GitHubToken is the workflow's GITHUB_TOKEN.
func (m *AgentJobRequestMessage) GitHubToken() string {
	if v := m.Variables.Value(varGitHubToken); v != "" {
		return v
	}
	return m.ContextData.Get("github").StringAt("token")
}

// Secrets returns the secrets context: every isSecret variable but the
// runner's own tokens, keyed by upper-cased name, plus GITHUB_TOKEN.
func (m *AgentJobRequestMessage) Secrets() map[string]string {
	out := map[string]string{}
	for k, v := range m.Variables {
		if !bool(v.IsSecret) || strings.EqualFold(k, varGitHubToken) || strings.EqualFold(k, varAccessToken) {
			continue
		}
		out[strings.ToUpper(k)] = v.Value
	}
	if t := m.GitHubToken(); t != "" {
		out["GITHUB_TOKEN"] = t
	}
	return out
}

// MaskValues returns every value the job's output must never show: the
// secret variables, the job token, the GitHub token and the mask hints.
func (m *AgentJobRequestMessage) MaskValues() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	keys := make([]string, 0, len(m.Variables))
	for k := range m.Variables {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := m.Variables[k]; v.IsSecret {
			add(v.Value)
		}
	}
	add(m.JobToken())
	add(m.GitHubToken())
	for _, h := range m.Mask {
		add(h.Value)
	}
	return out
}

// Debug reports whether step debug logging was requested.
func (m *AgentJobRequestMessage) Debug() bool {
	return strings.EqualFold(m.Variables.Value(varStepDebug), "true")
}

func lookupFold(m map[string]string, name string) string {
	if v, ok := m[name]; ok {
		return v
	}
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}
