package github

import (
	"reflect"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/job"
)

func TestSplitArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "", want: nil},
		{in: "  a  b\tc ", want: []string{"a", "b", "c"}},
		{in: `-c 'echo "$X" && ls'`, want: []string{"-c", `echo "$X" && ls`}},
		{in: `"a b" 'c d' e\ f`, want: []string{"a b", "c d", "e f"}},
		{in: `"say \"hi\" \\ now" ''`, want: []string{`say "hi" \ now`, ""}},
		{in: `x"y"'z'`, want: []string{"xyz"}},
		{in: `'open`, bad: true},
		{in: `"open`, bad: true},
		{in: `trailing\`, bad: true},
	} {
		got, err := splitArgs(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("splitArgs(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestDockerActionManifestRefusals(t *testing.T) {
	for _, tc := range []struct{ yml, want string }{
		{"runs:\n  using: docker\n  image: Dockerfile\n", "its image is built from Dockerfile, which Airlock does not do"},
		{"runs:\n  using: docker\n  image: docker://\n", "runs.image: no image named"},
		{"runs:\n  using: docker\n  image: docker://acme/UPPER\n", `runs.image: image "acme/UPPER"`},
		{"runs:\n  using: docker\n", "its image is built from"},
	} {
		a := &action{uses: "acme/d@v1"}
		err := a.parse([]byte(tc.yml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parse(%q) = %v, want an error containing %q", tc.yml, err, tc.want)
		}
	}
	a := &action{uses: "acme/d@v1"}
	if err := a.parse([]byte("runs:\n  using: docker\n  image: docker://ghcr.io/acme/tool:1.2@sha256:" + strings.Repeat("ab", 32) + "\n")); err != nil || a.image != "ghcr.io/acme/tool:1.2@sha256:"+strings.Repeat("ab", 32) {
		t.Errorf("a published image: err %v, image %q", err, a.image)
	}
}

func TestJobTokenSurrogate(t *testing.T) {
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzY3AiOiJBY3Rpb25zLlJlc3VsdHM6cnVuOmpvYiJ9.c2lnbmF0dXJl"
	s := jobTokenSurrogate(jwt)
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0]+"."+parts[1] != "eyJhbGciOiJSUzI1NiJ9.eyJzY3AiOiJBY3Rpb25zLlJlc3VsdHM6cnVuOmpvYiJ9" || parts[2] == "c2lnbmF0dXJl" || len(parts[2]) < 40 {
		t.Errorf("surrogate of a JWT = %q, want its header and claims with another signature", s)
	}
	if s2 := jobTokenSurrogate(jwt); s2 == s {
		t.Errorf("two surrogates of one token are equal")
	}
	if s := jobTokenSurrogate("opaque-token-value"); strings.Contains(s, "opaque") || !strings.HasPrefix(s, "airlock-surrogate-") {
		t.Errorf("surrogate of an opaque token = %q", s)
	}
	m := testMessage(testenv.TestImage, runStep("s", "S", lit("true")))
	m.Resources.Endpoints[0].Data = map[string]string{"CacheServerUrl": "https://Cache.Example.test/x/", "GenerateIdTokenUrl": "https://127.0.0.1:9/id"}
	m.Variables["system.github.results_endpoint"] = Variable{Value: "https://results.example.test/"}
	j, err := m.ToJob(ConvertOptions{IDPrefix: "gh"})
	if err != nil {
		t.Fatal(err)
	}
	var c job.ServiceCredential
	for _, sc := range j.ServiceCredentials {
		if sc.Name == jobTokenCredential {
			c = sc
		}
	}
	if c.Value != m.JobToken() || c.Surrogate == c.Value || jobTokenFor(j) != c.Surrogate ||
		strings.Join(c.Hosts, ",") != "127.0.0.1,results.example.test,cache.example.test" {
		t.Errorf("job token credential = {%s hosts %v}, want the token by surrogate for the run, results, cache and OIDC hosts", c.Name, c.Hosts)
	}
}

const dockerActionYML = `name: dock
inputs:
  who:
    default: world
runs:
  using: docker
  image: docker://IMAGE
  env:
    FROM_RUNS: ${{ inputs.who }}-env
  pre-entrypoint: /action/pre.sh
  entrypoint: /action/main.sh
  args:
    - ${{ inputs.who }}
    - second arg
  post-entrypoint: /action/post.sh
`

var dockerActionFiles = map[string]string{
	"/action/pre.sh": `#!/bin/sh
echo "pre: who=$INPUT_WHO"
echo "frompre=p1" >> "$GITHUB_STATE"
`,
	"/action/main.sh": `#!/bin/sh
echo "main: who=$INPUT_WHO arg1=$1 arg2=$2 runs-env=$FROM_RUNS step-env=$STEP_ENV pwd=$(pwd) ws=$GITHUB_WORKSPACE home=$HOME state=$STATE_frompre"
echo "main: in=$(cat data/in.txt)"
test -f "$GITHUB_EVENT_PATH" && echo "main: event-ok"
echo made-by-action > data/made.txt
rm data/gone.txt
echo "greeting=hi-$INPUT_WHO" >> "$GITHUB_OUTPUT"
echo "DOCKER_SET=yes" >> "$GITHUB_ENV"
echo "cleanup=c-$INPUT_WHO" >> "$GITHUB_STATE"
echo "::notice title=Docker::from the container"
echo "leak: $ACTIONS_RUNTIME_TOKEN"
echo "token-shape: ${ACTIONS_RUNTIME_TOKEN%%-*}"
echo kept-in-home > "$HOME/.kept"
echo "temp: $RUNNER_TEMP $(cat "$RUNNER_TEMP/from-job")"
echo from-action > "$RUNNER_TEMP/from-action"
`,
	"/action/post.sh": `#!/bin/sh
echo "post: state=$STATE_cleanup $STATE_frompre home=$(cat "$HOME/.kept")"
`,
}

// A Docker container action (published image) and a docker:// step run
// in containers of their image beside the job's: pre, main and post
// entrypoints, args, inputs, runs.env and the step's env, the workspace
// in and back, file commands, workflow commands and masking; their
// containers are gone afterwards (runDriven's cleanup checks).
func TestDriverDockerActions(t *testing.T) {
	t.Run("docker", func(t *testing.T) { testDriverDockerActions(t, newDockerRunner(t)) })
	t.Run("containerd", func(t *testing.T) { testDriverDockerActions(t, newContainerdRunner(t)) })
}

func testDriverDockerActions(t *testing.T, r *runner.Runner) {
	img := testenv.VariantImageFiles(t, dockerActionFiles)
	src := &mapSource{actions: map[string]map[string]string{
		"acme/dock@v1": {"action.yml": strings.ReplaceAll(dockerActionYML, "IMAGE", img)},
		// No runs.entrypoint or runs.args: with: entrypoint and args are.
		"acme/plain@v1": {"action.yml": "runs:\n  using: docker\n  image: docker://" + img + "\n"},
	}}
	plain := usesStep("plain", "Plain", "acme/plain", "v1", "", mapping("entrypoint", "/bin/sh", "args", `-c "echo plain: \"\$1\"" x 'one arg'`))
	dock := usesStep("dock", "Dock", "acme/dock", "v1", "", mapping("who", exprTok("matrix.os")))
	dock.Environment = mapping("STEP_ENV", "se")
	url := usesStep("url", "URL", "", "", "", mapping("entrypoint", "/bin/sh", "args", `-c 'echo "url: x=$INPUT_X wd=$(pwd) $0 made=$(cat data/made.txt) via-env=$(cat "$IN_FILE") home=$(cat "$HOME/.kept") tmp=$TMP_FILE"; exit 3' named`, "x", "1"))
	// A value naming the workspace names it where the action's container has it.
	url.Environment = mapping("IN_FILE", exprTok("format('{0}/data/in.txt', github.workspace)"), "TMP_FILE", exprTok("format('{0}/x', runner.temp)"))
	url.Reference = ActionReference{Type: Enum("containerRegistry"), Image: img}
	url.ContinueOnError = &TemplateToken{Type: TokenBoolean, Bool: true}
	m := testMessage(testenv.TestImage,
		runStep("prep", "Prep", lit(`mkdir -p data && echo from-job > data/in.txt && echo x > data/gone.txt && echo in-temp > "$RUNNER_TEMP/from-job"`)),
		dock,
		url,
		plain,
		runStep("after", "After", exprTok(`format('echo "after: $(cat data/made.txt) gone=$(test -e data/gone.txt && echo no || echo yes) out={0} env=$DOCKER_SET url={1} temp=$(cat "$RUNNER_TEMP/from-action")"', steps.dock.outputs.greeting, steps.url.outcome)`)),
	)
	res, d, log := runDrivenOn(t, r, m, nil, DriverOptions{Actions: src})
	if res.State != runner.Success {
		t.Fatalf("result = %s %d (%v), want success\n%s", res.State, res.ExitCode, res.Err, log)
	}
	order := []string{
		"pre: who=linux",
		"main: who=linux arg1=linux arg2=second arg runs-env=linux-env step-env=se pwd=/github/workspace ws=/github/workspace home=/github/home state=p1",
		"main: in=from-job", "main: event-ok", "##[notice]from the container", "leak: [MASKED]",
		"token-shape: airlock", // the job token's surrogate, not the token
		"temp: /github/runner_temp in-temp",
		// HOME persists from one action's container to the next, as GitHub's
		// runner mounts one directory at /github/home in each.
		"url: x=1 wd=/github/workspace named made=made-by-action via-env=from-job home=kept-in-home tmp=/github/runner_temp/x",
		"plain: one arg",
		"after: made-by-action gone=yes out=hi-linux env=yes url=failure temp=from-action",
		"post: state=c-linux p1 home=kept-in-home",
	}
	inOrder(t, log, order)
	if strings.Contains(log, "job-token-value-0123456789") {
		t.Errorf("the job token shows in the log:\n%s", log)
	}
	rep := d.Report()
	if len(rep.Annotations) != 1 || rep.Annotations[0].StepName != "Dock" {
		t.Errorf("annotations = %+v, want the action's notice on its step", rep.Annotations)
	}
}
