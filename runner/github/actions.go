package github

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/airlock-ci/airlock/runner/github/expr"
	"github.com/airlock-ci/airlock/runner/job"
)

// ActionSource fetches actions on the host; the job never sees the
// credential it uses (ghproto: the launch service's tarball URL and its
// per-download token).
type ActionSource interface {
	// Fetch returns the archive of repo ("owner/name") at ref: a
	// gzip-compressed tar with one top-level directory, as GitHub's
	// tarball endpoint serves it. The caller closes it.
	Fetch(ctx context.Context, repo, ref string) (io.ReadCloser, error)
}

// Limits of an unpacked action.
const (
	maxActionBytes = 512 << 20
	maxActionFiles = 50000
	maxNesting     = 8 // composite actions within composite actions
)

// action is a resolved action: its manifest and where its files are.
type action struct {
	uses     string
	repo     string
	ref      string
	hostDir  string // "" for a local action (files only in the container)
	ctrDir   string // the action's directory in the container
	manifest manifest
	image    string // a Docker container action's image (no docker://)
}

// manifest is action.yml.
type manifest struct {
	Name    string                 `yaml:"name"`
	Inputs  map[string]actionInput `yaml:"inputs"`
	Outputs map[string]struct {
		Value string `yaml:"value"`
	} `yaml:"outputs"`
	Runs struct {
		Using  string            `yaml:"using"`
		Main   string            `yaml:"main"`
		Pre    string            `yaml:"pre"`
		PreIf  string            `yaml:"pre-if"`
		Post   string            `yaml:"post"`
		PostIf string            `yaml:"post-if"`
		Steps  []compositeStep   `yaml:"steps"`
		Image  string            `yaml:"image"`
		Env    map[string]string `yaml:"env"`
		// A Docker container action's.
		Entrypoint     string   `yaml:"entrypoint"`
		Args           []string `yaml:"args"`
		PreEntrypoint  string   `yaml:"pre-entrypoint"`
		PostEntrypoint string   `yaml:"post-entrypoint"`
	} `yaml:"runs"`
}

type actionInput struct {
	Default  *string `yaml:"default"`
	Required bool    `yaml:"required"`
}

type compositeStep struct {
	ID               string            `yaml:"id"`
	Name             string            `yaml:"name"`
	If               string            `yaml:"if"`
	Run              string            `yaml:"run"`
	Shell            string            `yaml:"shell"`
	Uses             string            `yaml:"uses"`
	With             map[string]string `yaml:"with"`
	Env              map[string]string `yaml:"env"`
	WorkingDirectory string            `yaml:"working-directory"`
	ContinueOnError  string            `yaml:"continue-on-error"`
}

func (a *action) isDocker() bool { return strings.EqualFold(a.manifest.Runs.Using, "docker") }

// hasPre says whether the action has a pre step (a node action's
// runs.pre, a Docker action's runs.pre-entrypoint).
func (a *action) hasPre() bool {
	return (a.isNode() && a.manifest.Runs.Pre != "") || (a.isDocker() && a.manifest.Runs.PreEntrypoint != "")
}

// hasPost says whether the action has a post step.
func (a *action) hasPost() bool {
	return (a.isNode() && a.manifest.Runs.Post != "") || (a.isDocker() && a.manifest.Runs.PostEntrypoint != "")
}

func (a *action) isNode() bool {
	switch strings.ToLower(a.manifest.Runs.Using) {
	case "node12", "node16", "node20", "node24":
		return true
	}
	return false
}

var usesRE = regexp.MustCompile(`^([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)((?:/[A-Za-z0-9_.@ -]+)*)@([A-Za-z0-9_./-]+)$`)

// remoteAction fetches owner/repo[/path]@ref through the ActionSource
// and unpacks it under the job's runtime directory (read-only in the
// container). The same uses is fetched once per job.
func (d *Driver) remoteAction(ctx context.Context, uses string) (*action, error) {
	if a, ok := d.actions[uses]; ok {
		return a, nil
	}
	mm := usesRE.FindStringSubmatch(uses)
	if mm == nil || strings.Contains(uses, "..") {
		return nil, fmt.Errorf("uses %q: want owner/repo[/path]@ref", clipText(uses))
	}
	repo, sub, ref := mm[1]+"/"+mm[2], strings.Trim(mm[3], "/"), mm[4]
	if d.opts.Actions == nil {
		return nil, fmt.Errorf("uses %s: this runner has no action source to fetch actions from", uses)
	}
	rel := path.Join(actionsSubdir, mm[1], mm[2], url.PathEscape(ref))
	root := filepath.Join(d.hostDir, filepath.FromSlash(rel))
	if _, err := os.Stat(root); err != nil {
		rc, err := d.opts.Actions.Fetch(ctx, repo, ref)
		if err != nil {
			return nil, fmt.Errorf("fetching action %s@%s: %w", repo, ref, err)
		}
		err = unpackAction(rc, root)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("unpacking action %s@%s: %w", repo, ref, err)
		}
	}
	a := &action{uses: uses, repo: repo, ref: ref,
		hostDir: filepath.Join(root, filepath.FromSlash(sub)), ctrDir: path.Join(d.ctrDir, rel, sub)}
	var raw []byte
	var err error
	for _, n := range []string{"action.yml", "action.yaml"} {
		if raw, err = os.ReadFile(filepath.Join(a.hostDir, n)); err == nil {
			break
		}
	}
	if err != nil {
		if _, derr := os.Stat(filepath.Join(a.hostDir, "Dockerfile")); derr == nil {
			return nil, fmt.Errorf("action %s: an action that is only a Dockerfile is built on the host's engine, which Airlock does not do (use an action that publishes its image)", uses)
		}
		return nil, fmt.Errorf("action %s: no action.yml or action.yaml", uses)
	}
	if err := a.parse(raw); err != nil {
		return nil, err
	}
	d.actions[uses] = a
	return a, nil
}

func (a *action) parse(raw []byte) error {
	if err := yaml.Unmarshal(raw, &a.manifest); err != nil {
		return fmt.Errorf("action %s: parsing action.yml: %w", a.uses, err)
	}
	using := strings.ToLower(a.manifest.Runs.Using)
	switch {
	case a.isNode():
		if a.manifest.Runs.Main == "" {
			return fmt.Errorf("action %s: runs.main is missing", a.uses)
		}
		for _, f := range []string{a.manifest.Runs.Main, a.manifest.Runs.Pre, a.manifest.Runs.Post} {
			if f != "" && (path.IsAbs(f) || strings.Contains(f, "..")) {
				return fmt.Errorf("action %s: %q is outside the action", a.uses, clipText(f))
			}
		}
	case using == "composite":
	case using == "docker":
		img := strings.TrimSpace(a.manifest.Runs.Image)
		ref, ok := strings.CutPrefix(img, "docker://")
		if !ok {
			return fmt.Errorf("action %s: its image is built from %s, which Airlock does not do: a build runs the Dockerfile's RUN steps on the host's engine, outside the job's sandbox (use an action that publishes its image, runs.image: docker://...)", a.uses, clipText(img))
		}
		if err := validImageRef(ref); err != nil {
			return fmt.Errorf("action %s: runs.image: %w", a.uses, err)
		}
		a.image = ref
	default:
		return fmt.Errorf("action %s: runs.using %q is not supported by Airlock (node20, node24, composite and docker with a published image are)", a.uses, clipText(a.manifest.Runs.Using))
	}
	return nil
}

// unpackAction extracts a gzip'd tar with one top-level directory into
// root: regular files and directories only (links and devices are
// refused), no path outside root, bounded in size and count.
func unpackAction(r io.Reader, root string) (err error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return err
	}
	tmp := root + ".part"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	tr := tar.NewReader(zr)
	var total int64
	files := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		_, rest, _ := strings.Cut(name, "/") // strip the top-level directory
		if rest == "" {
			continue
		}
		if files++; files > maxActionFiles {
			return fmt.Errorf("more than %d files", maxActionFiles)
		}
		dst := filepath.Join(tmp, filepath.FromSlash(rest))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if total += hdr.Size; total > maxActionBytes {
				return fmt.Errorf("larger than %d bytes", maxActionBytes)
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			mode := os.FileMode(0o444)
			if hdr.Mode&0o111 != 0 {
				mode = 0o555
			}
			f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			_, cerr := io.Copy(f, io.LimitReader(tr, hdr.Size))
			if err := errors.Join(cerr, f.Close()); err != nil {
				return err
			}
		case tar.TypeSymlink, tar.TypeLink:
			return fmt.Errorf("%s: links are not allowed in an action archive", clipText(rest))
		default:
			return fmt.Errorf("%s: unsupported entry type %q", clipText(rest), hdr.Typeflag)
		}
	}
	return os.Rename(tmp, root)
}

// localAction reads ./path's action.yml from the job's workspace (it is
// part of the checked-out repository, in the container).
func (d *Driver) localAction(ctx context.Context, h job.StepHost, uses string) (*action, error) {
	rel := path.Clean(strings.TrimPrefix(uses, "./"))
	if strings.HasPrefix(rel, "..") || path.IsAbs(rel) {
		return nil, fmt.Errorf("uses %q: a local action must be inside the workspace", clipText(uses))
	}
	dir := path.Join(h.WorkDir(), rel)
	var out, stderr strings.Builder
	code, err := h.Exec(ctx, job.StepExec{Cmd: []string{"/bin/sh", "-c",
		`if [ -f "$1/action.yml" ]; then head -c 1048576 "$1/action.yml"; elif [ -f "$1/action.yaml" ]; then head -c 1048576 "$1/action.yaml"; elif [ -f "$1/Dockerfile" ]; then exit 3; else exit 2; fi`,
		"read", dir}, Stdout: &out, Stderr: &stderr})
	if err != nil {
		return nil, fmt.Errorf("reading action %s: %w", uses, err)
	}
	switch code {
	case 0:
	case 3:
		return nil, fmt.Errorf("action %s: an action that is only a Dockerfile is built on the host's engine, which Airlock does not do (use an action that publishes its image)", uses)
	case 2:
		return nil, fmt.Errorf("action %s: no action.yml or action.yaml in %s (did a checkout step run?)", uses, dir)
	default:
		return nil, fmt.Errorf("reading action %s: exit %d: %s", uses, code, clipText(stderr.String()))
	}
	a := &action{uses: uses, repo: "", ref: "", ctrDir: dir}
	if err := a.parse([]byte(out.String())); err != nil {
		return nil, err
	}
	if a.hasPre() {
		// As on GitHub: a local action is in the workspace only once the
		// job checked it out, after pre steps would have run.
		fmt.Fprintf(h.Log(), "##[warning]%s: its pre step is not run for a local action.\n", uses)
	}
	return a, nil
}

// resolve finds the action a uses: step names.
func (d *Driver) resolve(ctx context.Context, h job.StepHost, uses string) (*action, error) {
	switch {
	case strings.HasPrefix(uses, "docker://"):
		ref := strings.TrimPrefix(uses, "docker://")
		if err := validImageRef(ref); err != nil {
			return nil, fmt.Errorf("uses %s: %w", clipText(uses), err)
		}
		a := &action{uses: uses, image: ref}
		a.manifest.Runs.Using = "docker"
		return a, nil
	case strings.HasPrefix(uses, "./"):
		return d.localAction(ctx, h, uses)
	}
	return d.remoteAction(ctx, uses)
}

// runUses runs a uses: step (also inside a composite action).
func (d *Driver) runUses(ctx context.Context, e *entry, h job.StepHost, sc *scope, stepEnv map[string]string, uses string, with []job.KV, id string) (int, error) {
	a := e.act
	if a == nil || e.step.Uses != uses || sc.depth > 0 {
		var err error
		if a, err = d.resolve(ctx, h, uses); err != nil {
			return -1, err
		}
		if sc.depth == 0 {
			e.act = a
		}
	}
	inputs, err := d.inputs(a, with, sc, stepEnv)
	if err != nil {
		return -1, err
	}
	if sc.depth == 0 {
		e.with = inputs
	}
	if !a.isDocker() && !a.isNode() {
		return d.runComposite(ctx, e, h, sc, a, inputs, stepEnv, id)
	}
	var state map[string]string
	run := e
	if sc.depth == 0 {
		state = e.state // what pre saved
	} else {
		// An action inside a composite one: what its main saves in
		// GITHUB_STATE is its own post step's, not its siblings'.
		run = &entry{kind: kindMain, step: e.step, name: e.name, act: a}
	}
	var code int
	if a.isDocker() {
		code, err = d.runDocker(ctx, run, h, sc, a, kindMain, inputs, stepEnv, id, state)
	} else {
		code, err = d.runNode(ctx, run, h, sc, a, a.manifest.Runs.Main, inputs, stepEnv, id, state)
	}
	if err == nil && a.hasPost() {
		// Post steps run at the job's end in reverse order, those of
		// actions inside composite ones among them (as on GitHub), in
		// the scope and environment their main ran in.
		p := &entry{kind: kindPost, step: e.step, name: "Post " + e.name, act: a, with: inputs, state: run.state}
		if sc.depth > 0 {
			p.name += " (" + a.uses + ")"
			p.scope, p.env = sc, stepEnv
		}
		d.posts = append(d.posts, p)
	}
	return code, err
}

// inputs evaluates with: and fills in the action's defaults.
func (d *Driver) inputs(a *action, with []job.KV, sc *scope, stepEnv map[string]string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range with {
		v, err := d.evalString(kv.Value, sc, stepEnv)
		if err != nil {
			return nil, fmt.Errorf("with %s: %w", kv.Key, err)
		}
		out[strings.ToLower(kv.Key)] = v
	}
	for name, in := range a.manifest.Inputs {
		ln := strings.ToLower(name)
		if _, ok := out[ln]; ok {
			continue
		}
		if in.Default != nil {
			v, err := d.evalString(*in.Default, sc, stepEnv)
			if err != nil {
				return nil, fmt.Errorf("input %s default: %w", name, err)
			}
			out[ln] = v
		} else if in.Required {
			out[ln] = "" // GitHub warns only
		}
	}
	return out, nil
}

// runPhase runs an action's pre or post step with main's inputs, or
// (pre runs before main) the step's with: evaluated now.
func (d *Driver) runPhase(ctx context.Context, e *entry, h job.StepHost, stepEnv map[string]string, sc *scope) (int, error) {
	inputs := e.with
	if inputs == nil {
		var err error
		if inputs, err = d.inputs(e.act, e.step.With, sc, stepEnv); err != nil {
			return -1, err
		}
	}
	if e.act.isDocker() {
		return d.runDocker(ctx, e, h, sc, e.act, e.kind, inputs, stepEnv, e.step.ID, e.state)
	}
	file := e.act.manifest.Runs.Pre
	if e.kind == kindPost {
		file = e.act.manifest.Runs.Post
	}
	return d.runNode(ctx, e, h, sc, e.act, file, inputs, stepEnv, e.step.ID, e.state)
}

// runNode runs one JavaScript file of a node action with node from the
// job's image.
func (d *Driver) runNode(ctx context.Context, e *entry, h job.StepHost, sc *scope, a *action, file string, inputs, stepEnv map[string]string, id string, state map[string]string) (int, error) {
	if !d.hasNode {
		return -1, fmt.Errorf("action %s runs on %s, but the job's image has no node on its PATH", a.uses, a.manifest.Runs.Using)
	}
	nsc := *sc
	nsc.actionPath, nsc.actionRepo, nsc.actionRef = a.ctrDir, a.repo, a.ref
	fc := d.newFileCommands()
	action := id
	if action == "" {
		action = "__" + strings.NewReplacer("/", "_", "@", "_").Replace(strings.TrimPrefix(a.uses, "./"))
	}
	env := d.runtimeEnv(h, &nsc, fc, action, stepEnv, d.actionEnv(inputs, state)...)
	cmd := []string{"/bin/sh", "-c", wrapper, "node", "-", h.WorkDir(), "node", path.Join(a.ctrDir, file)}
	return d.execStep(ctx, e, h, sc, fc, cmd, env, nil, id)
}

// runComposite runs a composite action's steps with their own steps
// context and the action's inputs; its outputs become the step's.
func (d *Driver) runComposite(ctx context.Context, e *entry, h job.StepHost, sc *scope, a *action, inputs, stepEnv map[string]string, id string) (int, error) {
	if sc.depth >= maxNesting {
		return -1, fmt.Errorf("action %s: composite actions nested deeper than %d", a.uses, maxNesting)
	}
	in := expr.NewObject()
	for _, k := range sortedKeys(inputs) {
		in.Set(k, inputs[k])
	}
	failed := false
	nsc := &scope{steps: expr.NewObject(), inputs: in, actionPath: a.ctrDir, actionRepo: a.repo, actionRef: a.ref, depth: sc.depth + 1}
	outer := sc.status
	nsc.status = func() expr.Status { s := outer(); s.Failed = s.Failed || failed; return s }
	code := 0
	for i, cs := range a.manifest.Runs.Steps {
		name := cs.Name
		if name == "" {
			name = cs.ID
		}
		if name == "" {
			name = fmt.Sprintf("%d", i+1)
		}
		d.prepareEnv(nsc, stepEnv)
		ok, err := expr.Condition(stripTemplate(cs.If), d.env)
		if err != nil {
			return -1, fmt.Errorf("action %s step %s: if: %w", a.uses, name, err)
		}
		if !ok {
			continue
		}
		fmt.Fprintf(h.Log(), "##[group]%s / %s\n", e.name, name)
		var kvs []job.KV
		for _, k := range sortedKeys(cs.Env) {
			kvs = append(kvs, job.KV{Key: k, Value: cs.Env[k]})
		}
		merged := map[string]string{}
		for k, v := range stepEnv {
			merged[k] = v
		}
		nested, err := d.stepEnv(kvs, nsc)
		if err != nil {
			return -1, fmt.Errorf("action %s step %s: %w", a.uses, name, err)
		}
		for k, v := range nested {
			merged[k] = v
		}
		nid := cs.ID
		if nid == "" {
			nid = fmt.Sprintf("__composite_%d", i)
		}
		var c int
		switch {
		case cs.Run != "" && cs.Uses == "":
			c, err = d.runScript(ctx, e, h, nsc, merged, cs.Run, cs.Shell, cs.WorkingDirectory, nid)
		case cs.Uses != "" && cs.Run == "":
			var with []job.KV
			for _, k := range sortedKeys(cs.With) {
				with = append(with, job.KV{Key: k, Value: cs.With[k]})
			}
			c, err = d.runUses(ctx, e, h, nsc, merged, cs.Uses, with, nid)
		default:
			err = fmt.Errorf("a composite step has either run or uses")
		}
		fmt.Fprintf(h.Log(), "##[endgroup]\n")
		if err != nil {
			return -1, fmt.Errorf("action %s step %s: %w", a.uses, name, err)
		}
		so, _ := nsc.steps.Get(nid)
		outcome := "success"
		if c != 0 {
			outcome = "failure"
		}
		mayFail := false
		if cs.ContinueOnError != "" {
			v, err := d.eval(cs.ContinueOnError, nsc, merged)
			if err != nil {
				return -1, fmt.Errorf("action %s step %s: continue-on-error: %w", a.uses, name, err)
			}
			mayFail = expr.Truthy(v)
		}
		if o, ok := so.(*expr.Object); ok {
			o.Set("outcome", outcome)
			if mayFail {
				o.Set("conclusion", "success")
			} else {
				o.Set("conclusion", outcome)
			}
		}
		if c != 0 && !mayFail {
			failed, code = true, c
		}
	}
	// Outputs: evaluated in the action's scope, set on the calling step.
	d.prepareEnv(nsc, stepEnv)
	outs := d.outputsOf(sc, id, e)
	for name, o := range a.manifest.Outputs {
		v, err := expr.TemplateString(o.Value, d.env)
		if err != nil {
			return -1, fmt.Errorf("action %s output %s: %w", a.uses, name, err)
		}
		outs.Set(name, v)
	}
	return code, nil
}

// outputsOf returns (creating) steps.<id>.outputs in sc.
func (d *Driver) outputsOf(sc *scope, id string, e *entry) *expr.Object {
	key := id
	if key == "" {
		key = e.step.Ref
	}
	if v, ok := sc.steps.Get(key); ok {
		if o, ok := v.(*expr.Object); ok {
			if out, ok := o.Get("outputs"); ok {
				return out.(*expr.Object)
			}
		}
	}
	so := expr.NewObject()
	out := expr.NewObject()
	so.Set("outputs", out)
	sc.steps.Set(key, so)
	return out
}
