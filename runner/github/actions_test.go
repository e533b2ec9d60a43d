package github

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner"
)

// mapSource serves actions from memory as GitHub's tarball endpoint
// would: gzip'd tar, one top-level directory.
type mapSource struct {
	mu      sync.Mutex
	actions map[string]map[string]string // "owner/repo@ref" -> file -> content
	fetched []string
}

func (s *mapSource) Fetch(ctx context.Context, repo, ref string) (io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetched = append(s.fetched, repo+"@"+ref)
	files, ok := s.actions[repo+"@"+ref]
	if !ok {
		return nil, fmt.Errorf("no action %s@%s", repo, ref)
	}
	return io.NopCloser(bytes.NewReader(tarball(files))), nil
}

func tarball(files map[string]string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "owner-repo-abc123/", Mode: 0o755})
	for name, content := range files {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "owner-repo-abc123/" + name, Mode: 0o644, Size: int64(len(content))})
		io.WriteString(tw, content)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func usesStep(id, name, repo, ref, path string, with *TemplateToken) Step {
	stepN++
	s := Step{Type: Enum("action"), ID: fmt.Sprintf("00000000-0000-0000-0000-0000000001%02x", stepN), ContextName: id, DisplayName: name,
		Condition: "success()", Reference: ActionReference{Type: Enum("repository"), Name: repo, Ref: ref, RepositoryType: "GitHub", Path: path}, Inputs: with}
	if repo == "" {
		s.Reference.RepositoryType = "self"
	}
	return s
}

const jsAction = `name: hello
inputs:
  who:
    default: world
  greeting:
    default: ${{ github.repository }}
runs:
  using: node20
  pre: pre.js
  main: dist/main.js
  post: post.js
  post-if: always()
`

const jsMain = `const fs = require('fs');
console.log('main: hello ' + process.env.INPUT_WHO + ' from ' + process.env.INPUT_GREETING);
console.log('runtime token set: ' + (process.env.ACTIONS_RUNTIME_TOKEN !== undefined));
console.log('leak: ' + process.env.ACTIONS_RUNTIME_TOKEN);
console.log('main sees pre state ' + process.env.STATE_frompre);
fs.appendFileSync(process.env.GITHUB_OUTPUT, 'greeting=hi-' + process.env.INPUT_WHO + '\n');
fs.appendFileSync(process.env.GITHUB_STATE, 'cleanup=tmp-' + process.env.INPUT_WHO + '\n');
console.log('::notice title=JS::from node');
`

const compositeAction = `name: comp
inputs:
  name:
    required: true
outputs:
  shout:
    value: ${{ steps.up.outputs.v }}
runs:
  using: composite
  steps:
    - id: up
      shell: sh
      run: |
        echo "v=$(echo '${{ inputs.name }}' | tr a-z A-Z)" >> "$GITHUB_OUTPUT"
        sh "$GITHUB_ACTION_PATH/helper.sh"
    - if: ${{ inputs.name == 'nobody' }}
      shell: sh
      run: echo composite-skipped-step-ran
    - shell: sh
      env:
        INNER: ${{ steps.up.outputs.v }}
      run: echo "inner=$INNER"
`

func TestDriverActions(t *testing.T) {
	img := testenv.RequireNodeImage(t)
	src := &mapSource{actions: map[string]map[string]string{
		"acme/hello@v1": {"action.yml": jsAction, "dist/main.js": jsMain,
			"pre.js":  "console.log('pre: ' + process.env.INPUT_WHO); require('fs').appendFileSync(process.env.GITHUB_STATE, 'frompre=p1\\n');\n",
			"post.js": "console.log('post: state ' + process.env.STATE_cleanup + ' ' + process.env.STATE_frompre);\n"},
		"acme/tools@v2": {"comp/action.yml": compositeAction, "comp/helper.sh": "echo helper-ran-from-action-path\n"},
	}}
	m := testMessage(img,
		usesStep("hello", "Hello", "acme/hello", "v1", "", mapping("who", exprTok("matrix.os"))),
		usesStep("comp", "Composite", "acme/tools", "v2", "comp", mapping("name", lit("airlock"))),
		runStep("after", "After", exprTok(`format('echo "js={0} comp={1}"', steps.hello.outputs.greeting, steps.comp.outputs.shout)`),
			func(s *Step) { s.Condition = "success() && steps.comp.outputs.shout == 'AIRLOCK'" }),
		runStep("mklocal", "Make a local action", lit(`mkdir -p .github/actions/local && printf 'runs:\n  using: composite\n  steps:\n    - shell: sh\n      run: echo local-composite-ran\n' > .github/actions/local/action.yml`)),
		usesStep("local", "Local", "", "", "./.github/actions/local", nil),
		runStep("mkjs", "Make a local JS action", lit(`mkdir -p js && printf 'runs:\n  using: node24\n  main: m.js\n  post: p.js\n' > js/action.yml && echo 'console.log("local-js-main " + process.env.GITHUB_ACTION_PATH)' > js/m.js && echo 'console.log("local-js-post")' > js/p.js`)),
		usesStep("localjs", "Local JS", "", "", "./js", nil),
		runStep("fail", "Fail", lit("exit 1")),
	)
	res, d, log := runDriven(t, m, nil, DriverOptions{Actions: src})
	if res.State != runner.Failed || res.ExitCode != 1 {
		t.Errorf("result = %s %d (%v), want failed 1 (the last step fails)\n%s", res.State, res.ExitCode, res.Err, log)
	}
	order := []string{
		"pre: linux",
		"main: hello linux from acme/app", "runtime token set: true", "leak: [MASKED]", "main sees pre state p1", "##[notice]from node",
		"helper-ran-from-action-path", "inner=AIRLOCK",
		"js=hi-linux comp=AIRLOCK",
		"local-composite-ran",
		"local-js-main /builds/js",
		"local-js-post",
		"post: state tmp-linux p1",
	}
	inOrder(t, log, order)
	if strings.Contains(log, "composite-skipped-step-ran") || strings.Contains(log, "job-token-value-0123456789") {
		t.Errorf("skipped composite step ran or job token shown:\n%s", log)
	}
	if got := strings.Join(src.fetched, ","); got != "acme/hello@v1,acme/tools@v2" {
		t.Errorf("fetched %s, want each remote action once, before the steps", got)
	}
	rep := d.Report()
	if len(rep.Annotations) != 1 || rep.Annotations[0].Level != "notice" || rep.Annotations[0].StepName != "Hello" {
		t.Errorf("annotations = %+v", rep.Annotations)
	}
}

// inOrder fails the test unless log holds each of want, in that order.
func inOrder(t *testing.T, log string, want []string) {
	t.Helper()
	at := 0
	for _, w := range want {
		i := strings.Index(log[at:], w)
		if i < 0 {
			t.Fatalf("log lacks %q after position %d:\n%s", w, at, log)
		}
		at += i + len(w)
	}
}

func TestDriverActionRefusals(t *testing.T) {
	testenv.RequireTestImage(t)
	src := &mapSource{actions: map[string]map[string]string{
		"acme/hello@v1":  {"action.yml": jsAction, "dist/main.js": jsMain, "pre.js": "", "post.js": ""},
		"acme/docker@v1": {"action.yml": "runs:\n  using: docker\n  image: Dockerfile\n"},
	}}
	for _, tc := range []struct {
		name string
		step Step
		want string
	}{
		{"no node in the image", usesStep("n", "Needs node", "acme/hello", "v1", "", nil), "Needs node: action acme/hello@v1 runs on node20, but the job's image has no node"},
		{"docker url", func() Step {
			s := usesStep("d", "Docker URL", "", "", "", nil)
			s.Reference = ActionReference{Type: Enum("containerRegistry"), Image: "Not A Ref"}
			return s
		}(), `uses docker://Not A Ref: image "Not A Ref"`},
		{"dockerfile action", usesStep("d", "Docker action", "acme/docker", "v1", "", nil), "step Docker action: action acme/docker@v1: its image is built from Dockerfile, which Airlock does not do"},
		{"unknown action", usesStep("u", "Unknown", "acme/nope", "v1", "", nil), "fetching action acme/nope@v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testMessage(testenv.TestImage, tc.step)
			m.Steps[0].Condition = "success()"
			res, _, log := runDriven(t, m, nil, DriverOptions{Actions: src})
			if res.State != runner.Failed || res.Err == nil || !strings.Contains(res.Err.Error(), tc.want) {
				t.Errorf("result = %s (%v), want failed with %q\n%s", res.State, res.Err, tc.want, log)
			}
		})
	}
}

func TestUnpackActionRefusesEscapes(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  tar.Header
	}{
		{"symlink", tar.Header{Typeflag: tar.TypeSymlink, Name: "top/link", Linkname: "/etc/passwd"}},
		{"hard link", tar.Header{Typeflag: tar.TypeLink, Name: "top/link", Linkname: "top/a"}},
		{"device", tar.Header{Typeflag: tar.TypeChar, Name: "top/dev"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			tw := tar.NewWriter(zw)
			tw.WriteHeader(&tc.hdr)
			tw.Close()
			zw.Close()
			root := filepath.Join(t.TempDir(), "a")
			if err := unpackAction(&buf, root); err == nil {
				t.Errorf("unpackAction accepted a %s", tc.name)
			}
			if _, err := os.Stat(root); err == nil {
				t.Error("a refused archive left its directory")
			}
		})
	}
	// "../" in names stays inside root.
	root := filepath.Join(t.TempDir(), "a")
	if err := unpackAction(bytes.NewReader(tarball(map[string]string{"../../escape": "x"})), root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(root), "escape")); err == nil {
		t.Error("a ../ name escaped the action directory")
	}
}

// The post steps of actions inside a composite action run at the job's
// end with the job's other post steps, in reverse order, each with the
// state its own main saved, its inputs and its action path.
func TestDriverNestedPostSteps(t *testing.T) {
	img := testenv.RequireNodeImage(t)
	saver := map[string]string{
		"action.yml": "inputs:\n  what:\n    required: true\nruns:\n  using: node20\n  main: main.js\n  post: post.js\n",
		"main.js":    "require('fs').appendFileSync(process.env.GITHUB_STATE, 'key=saved-' + process.env.INPUT_WHAT + '\\n'); console.log('saver-main ' + process.env.INPUT_WHAT);\n",
		"post.js":    "console.log('saver-post state=' + process.env.STATE_key + ' input=' + process.env.INPUT_WHAT + ' env=' + process.env.FROM_COMPOSITE + ' path=' + process.env.GITHUB_ACTION_PATH.split('/').slice(-2).join('/'));\n",
	}
	wrap := `runs:
  using: composite
  steps:
    - uses: acme/saver@v1
      with:
        what: a
    - uses: acme/saver@v1
      env:
        FROM_COMPOSITE: b-env
      with:
        what: b
    - shell: sh
      run: echo wrap-done
`
	src := &mapSource{actions: map[string]map[string]string{
		"acme/saver@v1": saver,
		"acme/wrap@v1":  {"action.yml": wrap},
		"acme/hello@v1": {"action.yml": "runs:\n  using: node20\n  main: m.js\n  post: p.js\n", "m.js": "console.log('hello-main');\n", "p.js": "console.log('hello-post');\n"},
	}}
	m := testMessage(img,
		usesStep("hello", "Hello", "acme/hello", "v1", "", nil),
		usesStep("wrap", "Wrap", "acme/wrap", "v1", "", nil),
		runStep("later", "Later", lit("echo later-ran")),
	)
	res, _, log := runDriven(t, m, nil, DriverOptions{Actions: src})
	if res.State != runner.Success {
		t.Fatalf("result = %s (%v)\n%s", res.State, res.Err, log)
	}
	inOrder(t, log, []string{
		"hello-main", "saver-main a", "saver-main b", "wrap-done", "later-ran",
		"saver-post state=saved-b input=b env=b-env path=saver/v1",
		"saver-post state=saved-a input=a env=undefined path=saver/v1",
		"hello-post",
	})
	if strings.Contains(log, "is not run by Airlock") {
		t.Errorf("a nested post step was warned about:\n%s", log)
	}
}
