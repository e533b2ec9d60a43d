package github

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/distribution/reference"

	"github.com/airlock-ci/airlock/runner/github/expr"
	"github.com/airlock-ci/airlock/runner/job"
)

// Paths in a Docker container action's container, as GitHub's runner
// mounts them.
const (
	dockerRoot      = "/github"
	dockerWorkspace = dockerRoot + "/workspace"
	dockerFileCmds  = dockerRoot + "/file_commands"
	dockerHome      = dockerRoot + "/home"
	dockerTemp      = dockerRoot + "/runner_temp"
)

// validImageRef checks a Docker image reference (name[:tag][@digest]).
func validImageRef(ref string) error {
	if ref == "" {
		return errors.New("no image named")
	}
	if _, err := reference.ParseNormalizedNamed(ref); err != nil {
		return fmt.Errorf("image %q: %w", clipText(ref), err)
	}
	return nil
}

// runDocker runs a Docker container action's phase (pre-entrypoint,
// the main entrypoint with its args, or post-entrypoint) in a container
// of its image beside the job's: the workspace and RUNNER_TEMP are
// copied in and back (GITHUB_WORKSPACE is /github/workspace,
// RUNNER_TEMP /github/runner_temp, and HOME /github/home and the file
// commands' /github/file_commands are its _github_home and
// _runner_file_commands, as GitHub's runner mounts them: what one
// action leaves in its home the next finds), its inputs are INPUT_*
// variables, its output passes the workflow-command writer.
func (d *Driver) runDocker(ctx context.Context, e *entry, h job.StepHost, sc *scope, a *action, kind entryKind, inputs, stepEnv map[string]string, id string, state map[string]string) (int, error) {
	ch, ok := h.(job.ContainerStepHost)
	if !ok {
		return -1, fmt.Errorf("action %s is a Docker container action, which this runner cannot run (no second container of a job)", a.uses)
	}
	in := expr.NewObject()
	for _, k := range sortedKeys(inputs) {
		in.Set(k, inputs[k])
	}
	asc := *sc
	asc.inputs = in
	var entrypoint, args []string
	switch {
	case kind == kindPre:
		entrypoint = []string{a.manifest.Runs.PreEntrypoint}
	case kind == kindPost:
		entrypoint = []string{a.manifest.Runs.PostEntrypoint}
	default:
		// runs.entrypoint and runs.args, else (a docker:// step, or an
		// action.yml without them) with: entrypoint and args, as
		// GitHub's runner does; they are inputs too.
		if ep := a.manifest.Runs.Entrypoint; ep != "" {
			v, err := d.evalString(ep, &asc, stepEnv)
			if err != nil {
				return -1, fmt.Errorf("action %s: runs.entrypoint: %w", a.uses, err)
			}
			entrypoint = []string{v}
		} else if ep := inputs["entrypoint"]; ep != "" {
			entrypoint = []string{ep}
		}
		if a.manifest.Runs.Args != nil {
			args = []string{}
			for i, t := range a.manifest.Runs.Args {
				v, err := d.evalString(t, &asc, stepEnv)
				if err != nil {
					return -1, fmt.Errorf("action %s: runs.args[%d]: %w", a.uses, i, err)
				}
				args = append(args, v)
			}
		} else if v, ok := inputs["args"]; ok {
			var err error
			if args, err = splitArgs(v); err != nil {
				return -1, fmt.Errorf("with args: %w", err)
			}
		}
	}
	if entrypoint != nil && strings.TrimSpace(entrypoint[0]) == "" {
		return -1, fmt.Errorf("action %s: an empty entrypoint", a.uses)
	}
	// The action's runs.env, then the step's env over it.
	env := map[string]string{}
	for _, k := range sortedKeys(a.manifest.Runs.Env) {
		v, err := d.evalString(a.manifest.Runs.Env[k], &asc, stepEnv)
		if err != nil {
			return -1, fmt.Errorf("action %s: runs.env %s: %w", a.uses, k, err)
		}
		env[k] = v
	}
	for k, v := range stepEnv {
		env[k] = v
	}
	fc := d.newFileCommands()
	inCtr := fc.in(dockerFileCmds)
	nsc := *sc
	nsc.actionPath, nsc.actionRepo, nsc.actionRef = "", a.repo, a.ref
	action := id
	if action == "" {
		action = "__" + strings.NewReplacer("/", "_", "@", "_", ":", "_").Replace(strings.TrimPrefix(strings.TrimPrefix(a.uses, "docker://"), "./"))
	}
	full := d.runtimeEnv(h, &nsc, inCtr, action, env, d.actionEnv(inputs, state)...)
	// The image's own PATH stays: the job container's is no use there.
	// A value naming the workspace or RUNNER_TEMP names it where this
	// container has it (GitHub translates such paths too).
	kept := full[:0]
	wd := h.WorkDir()
	for _, kv := range full {
		k, v, _ := strings.Cut(kv, "=")
		if k == "PATH" {
			continue
		}
		for _, m := range [][2]string{{wd, dockerWorkspace}, {runnerTemp, dockerTemp}} {
			if v == m[0] || strings.HasPrefix(v, m[0]+"/") {
				kv = k + "=" + m[1] + strings.TrimPrefix(v, m[0])
				break
			}
		}
		kept = append(kept, kv)
	}
	kept = append(kept, "GITHUB_WORKSPACE="+dockerWorkspace, "HOME="+dockerHome, "RUNNER_TEMP="+dockerTemp)
	// The files start empty, as for any step; they travel in and back.
	var out strings.Builder
	code, err := h.Exec(ctx, job.StepExec{Cmd: append([]string{"/bin/sh", "-c", `for f; do : > "$f" || exit 1; done`, "files"}, fc.all()...), Stdout: &out})
	if err == nil && code != 0 {
		err = fmt.Errorf("exit %d: %s", code, clipText(out.String()))
	}
	if err != nil {
		return -1, fmt.Errorf("preparing the step's file commands: %w", err)
	}
	fmt.Fprintf(h.Log(), "Running %s in a container of image %s\n", a.uses, a.image)
	x := job.ContainerExec{
		Name:       fmt.Sprintf("action-%d", d.seq),
		Image:      a.image,
		Entrypoint: entrypoint,
		Args:       args,
		Env:        kept,
		Root:       dockerRoot,
		WorkDir:    dockerWorkspace,
		In:         []job.DirCopy{{From: h.WorkDir(), To: dockerWorkspace}, {From: runnerTemp, To: dockerTemp}},
		Links: []job.Symlink{
			{Path: dockerHome, Target: dockerTemp + strings.TrimPrefix(githubHome, runnerTemp)},
			{Path: dockerFileCmds, Target: dockerTemp + strings.TrimPrefix(fileCmdDir, runnerTemp)},
		},
		Out: []job.DirCopy{{From: dockerWorkspace, To: h.WorkDir()}, {From: dockerTemp, To: runnerTemp}},
	}
	return d.runStep(ctx, e, h, sc, fc, id, func(stdout *commandWriter) (int, error) {
		x.Stdout = stdout
		return ch.ExecContainer(ctx, x)
	})
}

// actionEnv is what an action's process gets besides the step's
// environment: its inputs, the state its pre step saved, and the
// runtime's URLs and the job token's surrogate (for the toolkit's
// artifact and cache calls, which the gateway completes).
func (d *Driver) actionEnv(inputs, state map[string]string) []string {
	var extra []string
	for _, k := range sortedKeys(inputs) {
		extra = append(extra, "INPUT_"+strings.ToUpper(strings.ReplaceAll(k, " ", "_"))+"="+inputs[k])
	}
	for _, k := range sortedKeys(state) {
		extra = append(extra, "STATE_"+k+"="+state[k])
	}
	conn := d.m.SystemConnection()
	runtimeURL := conn.DataValue("PipelinesServiceUrl")
	if runtimeURL == "" {
		runtimeURL = d.m.RunServiceURL()
	}
	return append(extra,
		"ACTIONS_RUNTIME_URL="+runtimeURL,
		"ACTIONS_RUNTIME_TOKEN="+jobTokenFor(d.j),
		"ACTIONS_RESULTS_URL="+d.m.ResultsURL(),
		"ACTIONS_CACHE_URL="+conn.DataValue("CacheServerUrl"),
	)
}

// splitArgs splits a docker:// step's with: args as a shell splits
// words: blanks separate, single quotes keep everything, double quotes
// keep all but \" and \\, a backslash outside quotes escapes the next
// character. Nothing is expanded.
func splitArgs(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case quote == '"':
			switch r {
			case '"':
				quote = 0
			case '\\':
				esc = true
			default:
				cur.WriteRune(r)
			}
		case r == '\\':
			esc, inWord = true, true
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case unicode.IsSpace(r):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || esc {
		return nil, errors.New("unterminated quote or escape")
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}
