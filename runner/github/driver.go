package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/github/expr"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets/mask"
)

// Driver runs a GitHub workflow job's steps with GitHub's semantics
// inside the runner's step loop (it implements job.StepDriver): step
// conditions with the status functions, shells, env and file commands
// between steps, workflow commands in the output, step and job outputs,
// JavaScript and composite actions fetched on the host, post steps.
// One Driver serves one run of one job.
type Driver struct {
	m    *AgentJobRequestMessage
	j    *job.Job
	opts DriverOptions
	log  hclog.Logger

	env      *expr.Env
	steps    *expr.Object // the steps context
	addEnv   *expr.Object // GITHUB_ENV so far
	addPath  []string     // GITHUB_PATH so far, latest first
	basePath string
	hasBash  bool
	hasNode  bool
	seq      int // file-command file counter

	hostDir, ctrDir string          // the job's runtime directory
	ctx             context.Context // of the call in progress (for hashFiles)
	list            []*entry
	posts           []*entry
	actions         map[string]*action // fetched remote actions by uses

	mu          sync.Mutex
	annotations []Annotation
	summaries   []StepSummary
	results     map[string]*StepReport
	outputs     map[string]string
}

// DriverOptions configure a Driver.
type DriverOptions struct {
	// Actions fetches remote actions on the host; nil refuses them.
	Actions ActionSource
	// RunnerName is runner.name / RUNNER_NAME.
	RunnerName string
	// Log receives the driver's own diagnostics (never job output).
	Log hclog.Logger
}

// StepSummary is a step's GITHUB_STEP_SUMMARY (markdown, at most 1 MiB).
type StepSummary struct {
	StepRef  string
	Markdown string
}

// StepReport is how a workflow step ended, for the coordinator's report.
type StepReport struct {
	Ref        string // the message's step id
	Name       string
	Outcome    string // success, failure, cancelled, skipped
	Conclusion string // the outcome after continue-on-error
	Started    time.Time
	Finished   time.Time
}

type entryKind int

const (
	kindMain entryKind = iota
	kindPre
	kindPost
)

// entry is one step the driver runs: a job step, or an action's pre or
// post step.
type entry struct {
	kind  entryKind
	step  *job.Step
	name  string
	act   *action
	with  map[string]string // evaluated inputs (pre/post reuse the main's)
	state map[string]string // GITHUB_STATE of the main step, for post
	// The post step of an action inside a composite action runs in the
	// scope and with the environment its main step had (nil: the job's).
	scope *scope
	env   map[string]string
}

// Paths in the job's container, laid out as GitHub's runner lays out
// its work directory: the file commands and the Docker actions' home
// are in RUNNER_TEMP, the tool cache beside it.
const (
	runnerRoot    = "/tmp/airlock-runner"
	runnerTemp    = runnerRoot + "/_temp"
	fileCmdDir    = runnerTemp + "/_runner_file_commands"
	githubHome    = runnerTemp + "/_github_home"
	toolCache     = runnerRoot + "/_tool"
	eventFile     = "github-event.json"
	actionsSubdir = "actions"
)

// NewDriver returns the driver for j, which m.ToJob converted.
func NewDriver(m *AgentJobRequestMessage, j *job.Job, o DriverOptions) *Driver {
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	if o.RunnerName == "" {
		o.RunnerName = "airlock"
	}
	d := &Driver{m: m, j: j, opts: o, log: o.Log,
		steps: expr.NewObject(), addEnv: expr.NewObject(),
		actions: map[string]*action{}, results: map[string]*StepReport{}}
	for i := range j.Steps {
		d.list = append(d.list, &entry{kind: kindMain, step: &j.Steps[i], name: j.Steps[i].Name})
	}
	return d
}

// Begin masks the job's secrets, probes the image (bash, node, PATH),
// prepares the runner's directories, writes the event payload and fetches
// the remote actions on the host.
func (d *Driver) Begin(ctx context.Context, h job.StepHost) error {
	if n := h.Mask(d.m.MaskValues()...); n > 0 {
		fmt.Fprintf(h.Log(), "##[warning]%d of this job's secret values are shorter than %d characters: Airlock does not mask values that short, so keep them out of the log\n", n, mask.MinLength)
	}
	d.hostDir, d.ctrDir = h.RuntimeDir()
	d.env = d.m.baseEnv(nil, d.j)
	d.ctx = ctx
	d.env.HashFiles = func(patterns []string) (string, error) { return d.hashFiles(d.ctx, h, patterns) }
	d.contexts(h)

	var out strings.Builder
	probe := `command -v bash >/dev/null 2>&1 && echo bash=1; command -v node >/dev/null 2>&1 && echo node=1; printf 'path=%s\n' "$PATH"; mkdir -p "$1" "$2" "$3"`
	code, err := h.Exec(ctx, job.StepExec{Cmd: []string{"/bin/sh", "-c", probe, "probe", fileCmdDir, githubHome, toolCache}, Stdout: &out, Stderr: &out})
	if err != nil {
		return fmt.Errorf("probing the job's image: %w", err)
	}
	if code != 0 {
		return fmt.Errorf("preparing %s in the job's container failed (exit %d): %s", runnerTemp, code, clipText(out.String()))
	}
	for _, l := range strings.Split(out.String(), "\n") {
		switch {
		case l == "bash=1":
			d.hasBash = true
		case l == "node=1":
			d.hasNode = true
		case strings.HasPrefix(l, "path="):
			d.basePath = strings.TrimPrefix(l, "path=")
		}
	}
	if d.basePath == "" {
		d.basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	ev, err := json.Marshal(d.m.ContextData.Get("github").Get("event"))
	if err != nil {
		return fmt.Errorf("encoding the event payload: %w", err)
	}
	if string(ev) == "null" {
		ev = []byte("{}")
	}
	if err := os.WriteFile(filepath.Join(d.hostDir, eventFile), ev, 0o444); err != nil {
		return fmt.Errorf("writing the event payload: %w", err)
	}
	// Remote actions are fetched now, on the host, like GitHub's "Set up
	// job"; their pre steps run first, in order.
	var pres []*entry
	for _, e := range d.list {
		s := e.step
		if s.Kind != job.StepUses || strings.HasPrefix(s.Uses, "./") || strings.HasPrefix(s.Uses, "docker://") {
			continue
		}
		a, err := d.remoteAction(ctx, s.Uses)
		if err != nil {
			return fmt.Errorf("step %s: %w", s.Name, err)
		}
		e.act = a
		if a.hasPre() {
			// State saved by pre reaches main and post (STATE_*).
			e.state = map[string]string{}
			pres = append(pres, &entry{kind: kindPre, step: s, name: "Pre " + s.Name, act: a, state: e.state})
		}
	}
	d.list = append(pres, d.list...)
	return nil
}

// Len is the number of steps: pre, main, then the post steps of the
// actions that ran, in reverse order.
func (d *Driver) Len() int { return len(d.list) + len(d.posts) }

func (d *Driver) at(i int) *entry {
	if i < len(d.list) {
		return d.list[i]
	}
	return d.posts[len(d.posts)-1-(i-len(d.list))]
}

// Name is step i's display name.
func (d *Driver) Name(i int) string { return d.at(i).name }

// Decide evaluates step i's condition: if: with the implicit success()
// for main steps, pre-if/post-if (default always()) for pre and post.
func (d *Driver) Decide(ctx context.Context, i int, st job.RunStatus) (bool, error) {
	e := d.at(i)
	d.ctx = ctx
	d.setStatus(st)
	cond := e.step.If
	switch e.kind {
	case kindPre:
		cond = orDefault(stripTemplate(e.act.manifest.Runs.PreIf), "always()")
	case kindPost:
		cond = orDefault(stripTemplate(e.act.manifest.Runs.PostIf), "always()")
	}
	d.prepareEnv(d.topScope(), nil) // a composite action may have left its own contexts
	ok, err := expr.Condition(cond, d.env)
	if err != nil {
		if e.kind == kindMain {
			d.record(e, "failure", "failure", time.Now())
		}
		return false, fmt.Errorf("evaluating if: %w", err)
	}
	if !ok && e.kind == kindMain {
		d.record(e, "skipped", "skipped", time.Now())
	}
	return ok, nil
}

// Run runs step i.
func (d *Driver) Run(ctx context.Context, i int, h job.StepHost) (job.StepResult, bool) {
	e := d.at(i)
	d.ctx = ctx
	start := time.Now()
	res, mayFail := d.runEntry(ctx, e, h)
	res.Duration = time.Since(start)
	outcome := "success"
	switch {
	case ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded):
		outcome = "cancelled"
	case res.Err != nil || res.ExitCode != 0:
		outcome = "failure"
	}
	conclusion := outcome
	if outcome == "failure" && mayFail {
		conclusion = "success"
	}
	if e.kind == kindMain {
		d.record(e, outcome, conclusion, start)
	}
	// A cancelled step does not fail the job: the job ends canceled, and
	// failure() stays false for the steps that still run.
	return res, outcome == "failure" && !mayFail
}

// record sets steps.<id> and the step's report.
func (d *Driver) record(e *entry, outcome, conclusion string, start time.Time) {
	s := e.step
	key := s.ID
	if key == "" {
		key = s.Ref
	}
	so := d.stepObject(key)
	so.Set("outcome", outcome)
	so.Set("conclusion", conclusion)
	d.mu.Lock()
	d.results[s.Ref] = &StepReport{Ref: s.Ref, Name: s.Name, Outcome: outcome, Conclusion: conclusion, Started: start, Finished: time.Now()}
	d.mu.Unlock()
}

func (d *Driver) stepObject(key string) *expr.Object {
	if v, ok := d.steps.Get(key); ok {
		return v.(*expr.Object)
	}
	o := expr.NewObject()
	o.Set("outputs", expr.NewObject())
	d.steps.Set(key, o)
	return o
}

// End evaluates the job's outputs. An output holding a secret is dropped
// with a warning, as GitHub does.
func (d *Driver) End(ctx context.Context, st job.RunStatus, h job.StepHost) error {
	d.ctx = ctx
	d.setStatus(st)
	d.prepareEnv(d.topScope(), nil)
	out := map[string]string{}
	var errs []error
	secrets := d.m.secretValues(d.j)
	for _, kv := range d.j.Outputs {
		v, err := expr.TemplateString(kv.Value, d.env)
		if err != nil {
			errs = append(errs, fmt.Errorf("job output %s: %w", kv.Key, err))
			continue
		}
		if containsSecret(v, secrets) {
			fmt.Fprintf(h.Log(), "##[warning]Skip output '%s' since it may contain secret.\n", kv.Key)
			continue
		}
		out[kv.Key] = v
	}
	d.mu.Lock()
	d.outputs = out
	d.mu.Unlock()
	return errors.Join(errs...)
}

// Report is what the job produced besides its log, for completejob and
// the results service.
type Report struct {
	Outputs     map[string]string
	Annotations []Annotation
	Summaries   []StepSummary
	Steps       []StepReport // in the job's step order; steps never reached are absent
}

// Report returns what the job produced so far.
func (d *Driver) Report() Report {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := Report{Outputs: map[string]string{}, Annotations: append([]Annotation(nil), d.annotations...), Summaries: append([]StepSummary(nil), d.summaries...)}
	for k, v := range d.outputs {
		r.Outputs[k] = v
	}
	for _, s := range d.j.Steps {
		if sr, ok := d.results[s.Ref]; ok {
			r.Steps = append(r.Steps, *sr)
		}
	}
	return r
}

func (d *Driver) setStatus(st job.RunStatus) {
	d.env.Status = expr.Status{Failed: st.Failed, Cancelled: st.Canceled}
	status := "success"
	switch {
	case st.Canceled:
		status = "cancelled"
	case st.Failed:
		status = "failure"
	}
	jc, _ := d.env.Contexts["job"].(*expr.Object)
	if jc != nil {
		jc.Set("status", status)
	}
}

// contexts completes the contexts the message gave with the runner's.
func (d *Driver) contexts(h job.StepHost) {
	c := d.env.Contexts
	gh := c["github"].(*expr.Object)
	gh.Set("workspace", h.WorkDir())
	gh.Set("event_path", d.ctrDir+"/"+eventFile)
	c["steps"] = d.steps
	jc := expr.NewObject()
	jc.Set("status", "success")
	jc.Set("services", expr.NewObject())
	c["job"] = jc
	rc := expr.NewObject()
	rc.Set("os", "Linux")
	rc.Set("arch", runnerArch())
	rc.Set("name", d.opts.RunnerName)
	rc.Set("environment", "self-hosted")
	rc.Set("temp", runnerTemp)
	rc.Set("tool_cache", toolCache)
	rc.Set("workspace", path.Dir(h.WorkDir()))
	if d.m.Debug() {
		rc.Set("debug", "1")
	}
	c["runner"] = rc
	for _, k := range []string{"vars", "matrix", "strategy", "needs", "inputs"} {
		if c[k] == nil {
			c[k] = expr.NewObject()
		}
	}
}

// envContext is the env context: the job's env, GITHUB_ENV so far, then
// the step's own.
func (d *Driver) envContext(step map[string]string) *expr.Object {
	o := expr.NewObject()
	for _, v := range d.j.Variables {
		if !v.Container {
			o.Set(v.Key, v.Value)
		}
	}
	for _, k := range d.addEnv.Keys() {
		v, _ := d.addEnv.Get(k)
		o.Set(k, v)
	}
	for _, k := range sortedKeys(step) {
		o.Set(k, step[k])
	}
	return o
}

// commandSink of one step.
type stepSink struct {
	d       *Driver
	h       job.StepHost
	e       *entry
	outputs *expr.Object
	state   map[string]string
}

func (s *stepSink) mask(values ...string) int { return s.h.Mask(values...) }
func (s *stepSink) debug() bool               { return s.d.m.Debug() }
func (s *stepSink) annotate(a Annotation) {
	a.StepRef, a.StepName = s.e.step.Ref, s.e.name
	s.d.mu.Lock()
	s.d.annotations = append(s.d.annotations, a)
	s.d.mu.Unlock()
}
func (s *stepSink) setOutput(name, value string) {
	if name != "" && s.outputs != nil {
		s.outputs.Set(name, value)
	}
}
func (s *stepSink) saveState(name, value string) {
	if name != "" && s.state != nil {
		s.state[name] = value
	}
}

func orDefault(s, def string) string {
	if strings.TrimSpace(s) == "" {
		return def
	}
	return s
}

// stripTemplate turns "${{ x }}" into "x" (an if: may be written either way).
func stripTemplate(s string) string {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "${{") && strings.HasSuffix(t, "}}") && strings.Count(t, "${{") == 1 {
		return strings.TrimSpace(t[3 : len(t)-2])
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
