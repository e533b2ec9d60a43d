package github

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/runner/github/expr"
	"github.com/airlock-ci/airlock/runner/job"
)

// maxFileCommand bounds what one file-command file may hold (GitHub's
// step summary limit; env and output files are far smaller in practice).
const maxFileCommand = 1 << 20

// stepTimeoutError is the cause of a step's timeout-minutes expiring.
type stepTimeoutError struct{ d time.Duration }

func (e stepTimeoutError) Error() string {
	return fmt.Sprintf("the step timed out after %s (timeout-minutes)", e.d)
}
func (e stepTimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// scope is what a step's templates see and where its results go: the
// job's steps context, or a composite action's own.
type scope struct {
	steps      *expr.Object
	inputs     *expr.Object // composite: the action's inputs
	actionPath string       // GITHUB_ACTION_PATH
	actionRepo string
	actionRef  string
	depth      int
	status     func() expr.Status
}

// topScope is the job's own scope: its steps context and status.
func (d *Driver) topScope() *scope {
	st := d.env.Status
	return &scope{steps: d.steps, status: func() expr.Status { return st }}
}

// runEntry runs one entry and says whether its failure may be ignored
// (continue-on-error).
func (d *Driver) runEntry(ctx context.Context, e *entry, h job.StepHost) (job.StepResult, bool) {
	s := e.step
	sc := d.topScope()
	stepEnv, err := d.stepEnv(s.Env, sc)
	if err != nil {
		return job.StepResult{ExitCode: -1, Err: err}, false
	}
	mayFail := s.AllowFailure
	if s.ContinueOnError != "" {
		v, err := d.eval(s.ContinueOnError, sc, stepEnv)
		if err != nil {
			return job.StepResult{ExitCode: -1, Err: fmt.Errorf("continue-on-error: %w", err)}, false
		}
		mayFail = expr.Truthy(v)
	}
	timeout := s.Timeout
	if s.TimeoutMinutes != "" {
		v, err := d.eval(s.TimeoutMinutes, sc, stepEnv)
		if err == nil {
			timeout, err = stepTimeout(v)
		}
		if err != nil {
			return job.StepResult{ExitCode: -1, Err: fmt.Errorf("timeout-minutes: %w", err)}, mayFail
		}
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout, stepTimeoutError{timeout})
		defer cancel()
	}
	if e.scope != nil {
		// The post step of an action inside a composite one: the
		// composite step's continue-on-error and timeout above, the
		// scope and environment its main ran in below.
		nsc := *e.scope
		nsc.status = sc.status // the job's status now, not at its main
		sc, stepEnv = &nsc, e.env
	}
	var code int
	switch {
	case e.kind != kindMain:
		code, err = d.runPhase(ctx, e, h, stepEnv, sc)
	case s.Kind == job.StepRun:
		code, err = d.runScript(ctx, e, h, sc, stepEnv, s.Run, s.Shell, s.WorkingDirectory, s.ID)
	case s.Kind == job.StepUses:
		code, err = d.runUses(ctx, e, h, sc, stepEnv, s.Uses, s.With, s.ID)
	default:
		err = fmt.Errorf("step kind %q is not a GitHub step", s.Kind)
	}
	if err != nil {
		code = -1
	}
	return job.StepResult{ExitCode: code, Err: err}, mayFail
}

// eval evaluates a template with the step's env in the env context.
func (d *Driver) eval(tmpl string, sc *scope, stepEnv map[string]string) (any, error) {
	d.prepareEnv(sc, stepEnv)
	return expr.Template(tmpl, d.env)
}

func (d *Driver) evalString(tmpl string, sc *scope, stepEnv map[string]string) (string, error) {
	v, err := d.eval(tmpl, sc, stepEnv)
	return expr.String(v), err
}

func (d *Driver) prepareEnv(sc *scope, stepEnv map[string]string) {
	d.env.Contexts["env"] = d.envContext(stepEnv)
	d.env.Contexts["steps"] = sc.steps
	if sc.inputs != nil {
		d.env.Contexts["inputs"] = sc.inputs
	} else if in := d.m.ContextData.Get("inputs"); in != nil {
		d.env.Contexts["inputs"] = in.Value()
	} else {
		d.env.Contexts["inputs"] = expr.NewObject()
	}
	d.env.Status = sc.status()
}

// stepEnv evaluates a step's env: entries, in order (GitHub evaluates
// each with the env context as it was before the step).
func (d *Driver) stepEnv(kvs []job.KV, sc *scope) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range kvs {
		v, err := d.evalString(kv.Value, sc, nil)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", kv.Key, err)
		}
		out[kv.Key] = v
	}
	return out, nil
}

// fileCommands are one step's file-command files in the container.
type fileCommands struct{ env, output, state, path, summary string }

func (d *Driver) newFileCommands() fileCommands {
	d.seq++
	n := strconv.Itoa(d.seq)
	return fileCommands{
		env:     fileCmdDir + "/set_env_" + n,
		output:  fileCmdDir + "/set_output_" + n,
		state:   fileCmdDir + "/save_state_" + n,
		path:    fileCmdDir + "/add_path_" + n,
		summary: fileCmdDir + "/step_summary_" + n,
	}
}

func (f fileCommands) all() []string { return []string{f.env, f.output, f.state, f.path, f.summary} }

// in is where the same files are when their directory is dir.
func (f fileCommands) in(dir string) fileCommands {
	at := func(p string) string { return path.Join(dir, path.Base(p)) }
	return fileCommands{env: at(f.env), output: at(f.output), state: at(f.state), path: at(f.path), summary: at(f.summary)}
}

// runtimeEnv is the environment GitHub documents for a step, then the
// job's GITHUB_ENV additions, then the step's env.
func (d *Driver) runtimeEnv(h job.StepHost, sc *scope, fc fileCommands, action string, stepEnv map[string]string, extra ...string) []string {
	gh := d.env.Contexts["github"].(*expr.Object)
	env := []string{"CI=true", "GITHUB_ACTIONS=true"}
	for _, k := range githubEnvKeys {
		if v, ok := gh.Get(k); ok {
			if s := expr.String(v); s != "" && (kind(v) != "object") {
				env = append(env, "GITHUB_"+strings.ToUpper(k)+"="+s)
			}
		}
	}
	env = append(env,
		"GITHUB_ACTION="+action,
		"GITHUB_WORKSPACE="+h.WorkDir(),
		"GITHUB_EVENT_PATH="+d.ctrDir+"/"+eventFile,
		"GITHUB_ENV="+fc.env, "GITHUB_OUTPUT="+fc.output, "GITHUB_STATE="+fc.state,
		"GITHUB_PATH="+fc.path, "GITHUB_STEP_SUMMARY="+fc.summary,
		"RUNNER_OS=Linux", "RUNNER_ARCH="+runnerArch(), "RUNNER_NAME="+d.opts.RunnerName,
		"RUNNER_TEMP="+runnerTemp, "RUNNER_TOOL_CACHE="+toolCache, "RUNNER_WORKSPACE="+path.Dir(h.WorkDir()),
		"RUNNER_ENVIRONMENT=self-hosted",
	)
	if d.m.Debug() {
		env = append(env, "RUNNER_DEBUG=1")
	}
	if sc.actionPath != "" {
		env = append(env, "GITHUB_ACTION_PATH="+sc.actionPath, "GITHUB_ACTION_REPOSITORY="+sc.actionRepo, "GITHUB_ACTION_REF="+sc.actionRef)
	}
	// OIDC: only when the service offers it (permissions: id-token: write).
	if u := d.m.SystemConnection().DataValue("GenerateIdTokenUrl"); u != "" {
		env = append(env, "ACTIONS_ID_TOKEN_REQUEST_URL="+u, "ACTIONS_ID_TOKEN_REQUEST_TOKEN="+jobTokenFor(d.j))
	}
	env = append(env, extra...)
	for _, k := range d.addEnv.Keys() {
		v, _ := d.addEnv.Get(k)
		env = append(env, k+"="+expr.String(v))
	}
	for _, k := range sortedKeys(stepEnv) {
		env = append(env, k+"="+stepEnv[k])
	}
	if len(d.addPath) > 0 {
		env = append(env, "PATH="+strings.Join(d.addPath, ":")+":"+d.basePath)
	}
	return env
}

// githubEnvKeys are the github context keys exported as GITHUB_<KEY>.
var githubEnvKeys = []string{"action_ref", "action_repository", "actor", "actor_id", "api_url", "base_ref",
	"event_name", "graphql_url", "head_ref", "job", "ref", "ref_name", "ref_protected", "ref_type",
	"repository", "repository_id", "repository_owner", "repository_owner_id", "retention_days", "run_attempt",
	"run_id", "run_number", "server_url", "sha", "triggering_actor", "workflow", "workflow_ref", "workflow_sha"}

func kind(v any) string {
	switch v.(type) {
	case *expr.Object, []any:
		return "object"
	}
	return "scalar"
}

func runnerArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "X64"
	case "arm64":
		return "ARM64"
	case "arm":
		return "ARM"
	case "386":
		return "X86"
	}
	return strings.ToUpper(runtime.GOARCH)
}

// shellCommand resolves shell: to a command line with {0} and the script
// file's extension.
func (d *Driver) shellCommand(shell string) ([]string, string, error) {
	switch strings.TrimSpace(shell) {
	case "":
		if d.hasBash {
			return []string{"bash", "-e", "{0}"}, ".sh", nil
		}
		return []string{"sh", "-e", "{0}"}, ".sh", nil
	case "bash":
		return []string{"bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "{0}"}, ".sh", nil
	case "sh":
		return []string{"sh", "-e", "{0}"}, ".sh", nil
	case "python":
		return []string{"python", "{0}"}, ".py", nil
	case "pwsh", "powershell", "cmd":
		return nil, "", fmt.Errorf("shell %s is not supported by Airlock on Linux", shell)
	}
	f := strings.Fields(shell)
	if !strings.Contains(shell, "{0}") {
		return nil, "", fmt.Errorf("shell %q: a custom shell must contain {0}", clipText(shell))
	}
	return f, "", nil
}

// wrapper writes the script (stdin) to $1 unless $1 is "-", empties the
// file-command files, changes to the directory $2 and runs the rest.
const wrapper = `s=$1; d=$2; shift 2
if [ "$s" != - ]; then cat > "$s" || exit 1; fi
for f in "$GITHUB_ENV" "$GITHUB_OUTPUT" "$GITHUB_STATE" "$GITHUB_PATH" "$GITHUB_STEP_SUMMARY"; do : > "$f" || exit 1; done
cd -- "$d" 2>/dev/null || { echo "##[error]working-directory $d does not exist" >&2; exit 1; }
exec "$@"`

// runScript runs a run: step (also inside a composite action).
func (d *Driver) runScript(ctx context.Context, e *entry, h job.StepHost, sc *scope, stepEnv map[string]string, runTmpl, shellTmpl, dirTmpl, id string) (int, error) {
	script, err := d.evalString(runTmpl, sc, stepEnv)
	if err != nil {
		return -1, fmt.Errorf("run: %w", err)
	}
	shell, err := d.evalString(shellTmpl, sc, stepEnv)
	if err != nil {
		return -1, fmt.Errorf("shell: %w", err)
	}
	dir, err := d.evalString(dirTmpl, sc, stepEnv)
	if err != nil {
		return -1, fmt.Errorf("working-directory: %w", err)
	}
	argv, ext, err := d.shellCommand(shell)
	if err != nil {
		return -1, err
	}
	file := runnerTemp + "/" + randomName() + ext
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "{0}", file)
	}
	wd := h.WorkDir()
	if dir != "" {
		wd = path.Join(wd, dir)
		if path.IsAbs(dir) {
			wd = path.Clean(dir)
		}
	}
	action := id
	if action == "" {
		action = "__run"
	}
	fc := d.newFileCommands()
	cmd := append([]string{"/bin/sh", "-c", wrapper, "step", file, wd}, argv...)
	return d.execStep(ctx, e, h, sc, fc, cmd, d.runtimeEnv(h, sc, fc, action, stepEnv), strings.NewReader(script), id)
}

// execStep runs cmd through the workflow-command writer and applies the
// step's file commands afterwards (also after a failure or timeout).
func (d *Driver) execStep(ctx context.Context, e *entry, h job.StepHost, sc *scope, fc fileCommands, cmd, env []string, stdin io.Reader, id string) (int, error) {
	return d.runStep(ctx, e, h, sc, fc, id, func(stdout *commandWriter) (int, error) {
		return h.Exec(ctx, job.StepExec{Cmd: cmd, Env: env, Stdin: stdin, Stdout: stdout})
	})
}

// runStep runs a step's process (exec, its output into the
// workflow-command writer) and applies its file commands afterwards.
func (d *Driver) runStep(ctx context.Context, e *entry, h job.StepHost, sc *scope, fc fileCommands, id string, exec func(stdout *commandWriter) (int, error)) (int, error) {
	outputs := d.outputsOf(sc, id, e)
	if e.state == nil {
		e.state = map[string]string{}
	}
	sink := &stepSink{d: d, h: h, e: e, outputs: outputs, state: e.state}
	cw := newCommandWriter(h.Log(), sink)
	code, err := exec(cw)
	ferr := cw.Flush()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	cerr := d.applyFileCommands(rctx, h, e, fc, sink)
	if err == nil && ferr != nil {
		err = fmt.Errorf("writing the step's output: %w", ferr)
	}
	if err != nil {
		return -1, err
	}
	if cerr != nil {
		fmt.Fprintf(h.Log(), "##[error]%v\n", cerr)
		if code == 0 {
			code = 1
		}
	}
	if len(cw.failed) > 0 && code == 0 {
		code = 1
	}
	return code, nil
}

// collectScript prints, for each file, its size and then its first
// maxFileCommand bytes (or -1 when it does not exist).
const collectScript = `for f; do if [ -f "$f" ]; then wc -c < "$f"; head -c ` + "1048576" + ` "$f"; else echo -1; fi; done`

// applyFileCommands reads the step's file-command files out of the
// container and applies them: env and path for later steps, outputs,
// state for the post step, the step summary.
func (d *Driver) applyFileCommands(ctx context.Context, h job.StepHost, e *entry, fc fileCommands, sink *stepSink) error {
	var out strings.Builder
	var stderr strings.Builder
	code, err := h.Exec(ctx, job.StepExec{Cmd: append([]string{"/bin/sh", "-c", collectScript, "collect"}, fc.all()...), Stdout: &out, Stderr: &stderr})
	if err != nil {
		return fmt.Errorf("reading the step's file commands: %w", err)
	}
	if code != 0 {
		return fmt.Errorf("reading the step's file commands: exit %d: %s", code, clipText(stderr.String()))
	}
	contents, err := splitCollected(out.String(), len(fc.all()))
	if err != nil {
		return fmt.Errorf("reading the step's file commands: %w", err)
	}
	var errs []error
	if kvs, err := parseKeyValueFile(contents[0]); err != nil {
		errs = append(errs, fmt.Errorf("GITHUB_ENV: %w", err))
	} else {
		for _, p := range kvs {
			if strings.EqualFold(p.key, "NODE_OPTIONS") {
				errs = append(errs, errors.New("GITHUB_ENV: NODE_OPTIONS cannot be set"))
				continue
			}
			if !job.ValidVarName(p.key) {
				errs = append(errs, fmt.Errorf("GITHUB_ENV: %q is not a valid variable name", clipText(p.key)))
				continue
			}
			d.addEnv.Set(p.key, p.value)
		}
	}
	if kvs, err := parseKeyValueFile(contents[1]); err != nil {
		errs = append(errs, fmt.Errorf("GITHUB_OUTPUT: %w", err))
	} else {
		for _, p := range kvs {
			sink.setOutput(p.key, p.value)
		}
	}
	if kvs, err := parseKeyValueFile(contents[2]); err != nil {
		errs = append(errs, fmt.Errorf("GITHUB_STATE: %w", err))
	} else {
		for _, p := range kvs {
			sink.saveState(p.key, p.value)
		}
	}
	dirs := parsePathFile(contents[3])
	for i := len(dirs) - 1; i >= 0; i-- {
		d.addPath = append([]string{dirs[i]}, d.addPath...)
	}
	if sum := contents[4]; strings.TrimSpace(sum) != "" {
		if len(sum) >= maxFileCommand {
			errs = append(errs, fmt.Errorf("GITHUB_STEP_SUMMARY: larger than %d bytes; not uploaded", maxFileCommand))
		} else {
			d.mu.Lock()
			d.summaries = append(d.summaries, StepSummary{StepRef: e.step.Ref, Markdown: sum})
			d.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// splitCollected splits collectScript's output into n contents.
func splitCollected(s string, n int) ([]string, error) {
	r := bufio.NewReader(strings.NewReader(s))
	out := make([]string, n)
	for i := 0; i < n; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("file %d: truncated listing", i)
		}
		size, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			return nil, fmt.Errorf("file %d: bad size %q", i, clipText(line))
		}
		if size < 0 {
			continue
		}
		if size > maxFileCommand {
			size = maxFileCommand
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, fmt.Errorf("file %d: truncated content", i)
		}
		out[i] = string(b)
	}
	return out, nil
}

func randomName() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}
