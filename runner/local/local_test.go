package local

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

func TestParseFull(t *testing.T) {
	src := `
image: airlock-test:busybox
variables:
  PLAIN: one
  NUM: 2
  TOKEN:
    value: tok-12345678
    masked: true
  CONF:
    value: "a=b"
    file: true
timeout: 90s
after_script_timeout: 1m
before_script: echo before
script:
  - echo one
  - - echo nested
  - |
    echo multi
    echo line
after_script:
  - echo after
secrets:
  - deploy-token
  - name: npm
    var: NPM_TOKEN
    delivery: proxy
egress:
  - registry.npmjs.test:443
  - "*.example.test"
`
	j, err := Parse("job.yml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !strings.HasPrefix(j.ID, "local-") || j.Source != job.SourceLocal || j.Name != "job" {
		t.Errorf("identity = %q %q %q, want local-*, local, job", j.ID, j.Source, j.Name)
	}
	if j.Image != "airlock-test:busybox" || j.Timeout != 90*time.Second {
		t.Errorf("image, timeout = %q, %s", j.Image, j.Timeout)
	}
	wantSteps := []job.Step{
		{Name: "script", When: job.OnSuccess, Script: []string{"echo before", "echo one", "echo nested", "echo multi\necho line\n"}},
		{Name: "after_script", When: job.Always, Timeout: time.Minute, Script: []string{"echo after"}},
	}
	if !reflect.DeepEqual(j.Steps, wantSteps) {
		t.Errorf("steps = %+v,\nwant %+v", j.Steps, wantSteps)
	}
	wantVars := []job.Variable{
		{Key: "PLAIN", Value: "one"},
		{Key: "NUM", Value: "2"},
		{Key: "TOKEN", Value: "tok-12345678", Masked: true},
		{Key: "CONF", Value: "a=b", File: true},
	}
	if !reflect.DeepEqual(j.Variables, wantVars) {
		t.Errorf("variables = %+v,\nwant %+v", j.Variables, wantVars)
	}
	wantSecrets := []job.SecretRequest{{Name: "deploy-token"}, {Name: "npm", Var: "NPM_TOKEN", Delivery: job.DeliverProxy}}
	if !reflect.DeepEqual(j.Secrets, wantSecrets) {
		t.Errorf("secrets = %+v, want %+v", j.Secrets, wantSecrets)
	}
	if got := j.Secrets[0].VarName(); got != "DEPLOY_TOKEN" {
		t.Errorf("VarName = %q, want DEPLOY_TOKEN", got)
	}
	if !reflect.DeepEqual(j.Egress, []string{"registry.npmjs.test:443", "*.example.test"}) {
		t.Errorf("egress = %q", j.Egress)
	}
	if got := j.Masked(); !reflect.DeepEqual(got, []string{"tok-12345678"}) {
		t.Errorf("Masked = %q", got)
	}
}

// image: entrypoint, as GitLab's: absent or [] keeps the image's, [""]
// or a shell clears it, another names it.
func TestParseEntrypoint(t *testing.T) {
	for _, tc := range []struct {
		image     string
		fromImage bool
		want      []string
	}{
		{image: "a", fromImage: true},
		{image: "{name: a}", fromImage: true},
		{image: "{name: a, entrypoint: []}", fromImage: true},
		{image: "{name: a, entrypoint: ['']}"},
		{image: "{name: a, entrypoint: [/bin/sh, -c]}"},
		{image: "{name: a, entrypoint: [/usr/bin/tini, --]}", want: []string{"/usr/bin/tini", "--"}},
	} {
		j, err := Parse("job.yml", []byte("image: "+tc.image+"\nscript: b\n"))
		if err != nil {
			t.Fatalf("image %s: %v", tc.image, err)
		}
		if j.EntrypointFromImage != tc.fromImage || !reflect.DeepEqual(j.StepEntrypoint, tc.want) {
			t.Errorf("image %s: from image %v, entrypoint %q; want %v, %q", tc.image, j.EntrypointFromImage, j.StepEntrypoint, tc.fromImage, tc.want)
		}
	}
}

func TestParseServices(t *testing.T) {
	j, err := Parse("job.yml", []byte(`image: a
script: b
services:
  - postgres:16
  - name: registry.example.com:5000/tools/redis:7
    alias: cache, kv
    entrypoint: [/entry.sh]
    command: [redis-server, --port, "6380"]
    variables:
      MODE: test
  - name: postgres:15
    alias: old-db
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []job.Service{
		{Image: "postgres:16", Aliases: []string{"postgres"}},
		{Image: "registry.example.com:5000/tools/redis:7", Aliases: []string{"cache", "kv", "registry.example.com__tools__redis", "registry.example.com-tools-redis"},
			Entrypoint: []string{"/entry.sh"}, Command: []string{"redis-server", "--port", "6380"},
			Variables: []job.Variable{{Key: "MODE", Value: "test", Public: true}}},
		// "postgres" is the first one's: not given twice.
		{Image: "postgres:15", Aliases: []string{"old-db"}},
	}
	if !reflect.DeepEqual(j.Services, want) {
		t.Errorf("services = %+v\nwant       %+v", j.Services, want)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // substrings the error must contain
	}{
		{"empty file", "", []string{"job.yml: empty job file"}},
		{"not a mapping", "- a\n- b\n", []string{"job.yml:1", "must be a mapping"}},
		{"bad yaml", "image: [\n", []string{"job.yml", "line"}},
		{"two documents", "image: a\nscript: b\n---\nimage: c\n", []string{"job.yml:3", "more than one YAML document"}},
		{"unknown key", "image: a\nscript: b\nscirpt: c\n", []string{"job.yml:3: scirpt: unknown key"}},
		{"duplicate key", "image: a\nscript: b\nimage: c\n", []string{"job.yml:3: image: duplicate key"}},
		{"missing script", "image: a\n", []string{"script: required"}},
		{"missing image", "script: b\n", []string{"image: required"}},
		{"empty script list", "image: a\nscript: []\n", []string{"job.yml:2: script: must not be empty"}},
		{"empty script string", "image: a\nscript: ''\n", []string{"job.yml:2: script: must not be empty"}},
		{"script wrong type", "image: a\nscript: {x: 1}\n", []string{"job.yml:2: script: must be a string or a list of strings, not a mapping"}},
		{"script entry wrong type", "image: a\nscript:\n  - echo\n  - {x: 1}\n", []string{"job.yml:4: script[1]: must be a string, not a mapping"}},
		{"script null entry", "image: a\nscript:\n  - ~\n", []string{"job.yml:3: script[0]: must be a string, not null"}},
		{"image wrong type", "image: [a]\nscript: b\n", []string{"job.yml:1: image: must be a string, not a list"}},
		{"image mapping without name", "image: {pull: x}\nscript: b\n", []string{"image.pull: unknown key", "image.name: required"}},
		{"entrypoint not a list", "image: {name: a, entrypoint: /entry.sh}\nscript: b\n", []string{"job.yml:1: image.entrypoint: must be a list of strings"}},
		{"entrypoint entry not a string", "image: {name: a, entrypoint: [[x]]}\nscript: b\n", []string{"image.entrypoint[0]: must be a string, not a list"}},
		{"entrypoint command empty", "image: {name: a, entrypoint: ['', x]}\nscript: b\n", []string{"image.entrypoint: its command is empty"}},
		{"bad duration", "image: a\nscript: b\ntimeout: soon\n", []string{"job.yml:3: timeout: duration \"soon\""}},
		{"negative duration", "image: a\nscript: b\ntimeout: -5m\n", []string{"timeout: duration \"-5m\": must be positive"}},
		{"huge duration", "image: a\nscript: b\ntimeout: 9999h\n", []string{"more than the"}},
		{"bad after timeout", "image: a\nscript: b\nafter_script_timeout: x\n", []string{"job.yml:3: after_script_timeout"}},
		{"variables not mapping", "image: a\nscript: b\nvariables: [a]\n", []string{"job.yml:3: variables: must be a mapping"}},
		{"bad variable name", "image: a\nscript: b\nvariables:\n  1BAD: x\n", []string{"job.yml:4: variables.1BAD: not a valid variable name"}},
		{"variable unknown field", "image: a\nscript: b\nvariables:\n  X: {value: a, secret: true}\n", []string{"variables.X.secret: unknown key"}},
		{"variable masked not bool", "image: a\nscript: b\nvariables:\n  X: {value: a, masked: yes please}\n", []string{"variables.X.masked: must be true or false"}},
		{"variable without value", "image: a\nscript: b\nvariables:\n  X: {masked: true}\n", []string{"variables.X.value: required"}},
		{"variable list value", "image: a\nscript: b\nvariables:\n  X: [1]\n", []string{"variables.X: must be a string or a mapping"}},
		{"secrets not list", "image: a\nscript: b\nsecrets: tok\n", []string{"job.yml:3: secrets: must be a list"}},
		{"bad secret name", "image: a\nscript: b\nsecrets:\n  - 'bad name!'\n", []string{"job.yml:4: secrets[0].name", "not a valid secret name"}},
		{"bad delivery", "image: a\nscript: b\nsecrets:\n  - {name: t, delivery: carrier-pigeon}\n", []string{"secrets[0].delivery: \"carrier-pigeon\": must be env, file or proxy"}},
		{"bad secret var", "image: a\nscript: b\nsecrets:\n  - {name: t, var: 9x}\n", []string{"secrets[0].var", "not a valid variable name"}},
		{"secret unknown key", "image: a\nscript: b\nsecrets:\n  - {name: t, path: x}\n", []string{"secrets[0].path: unknown key"}},
		{"secret declared twice", "image: a\nscript: b\nsecrets: [t, t]\n", []string{"declared twice"}},
		{"secret var clashes", "image: a\nscript: b\nvariables: {T: x}\nsecrets: [t]\n", []string{"clashes with a job variable"}},
		{"egress not list", "image: a\nscript: b\negress: host\n", []string{"job.yml:3: egress: must be a list"}},
		{"egress empty entry", "image: a\nscript: b\negress: ['']\n", []string{"egress[0]: empty entry"}},
		{"services not a list", "image: a\nscript: b\nservices: db\n", []string{"job.yml:3: services: must be a list"}},
		{"service without image", "image: a\nscript: b\nservices:\n  - {alias: db}\n", []string{"job.yml:4: services[0].name: required"}},
		{"service unknown key", "image: a\nscript: b\nservices:\n  - {name: pg, ports: [5432]}\n", []string{"services[0].ports: unknown key"}},
		{"service bad alias", "image: a\nscript: b\nservices:\n  - {name: pg, alias: 'd b!'}\n", []string{"services[0].alias: \"b!\" is not a valid host name"}},
		{"service command not a list", "image: a\nscript: b\nservices:\n  - {name: pg, command: run}\n", []string{"services[0].command: must be a list of strings"}},
		{"service masked variable", "image: a\nscript: b\nservices:\n  - {name: pg, variables: {P: {value: pw123456, masked: true}}}\n", []string{"services[0].variables.P: a service's variables are plain values"}},
		{"every problem at once", "image: [a]\nscript: []\ntimeout: x\nbogus: 1\n", []string{"image:", "script:", "timeout:", "bogus:"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j, err := Parse("job.yml", []byte(tc.src))
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tc.src, j)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse(%q) error = %q, want it to contain %q", tc.src, err, w)
				}
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90s", 90 * time.Second, true},
		{"1h30m", 90 * time.Minute, true},
		{"3600", time.Hour, true},
		{"0", 0, false},
		{"0s", 0, false},
		{"1 hour", 0, false},
		{"10x", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseDuration(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseDuration(%q) = %s, %v; want %s, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// Every example job in testdata/jobs parses.
func TestExampleJobs(t *testing.T) {
	files, err := filepath.Glob("../../testdata/jobs/*.yml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example jobs found: %v", err)
	}
	for _, f := range files {
		if _, err := ReadFile(f); err != nil {
			t.Errorf("ReadFile(%s): %v", f, err)
		}
	}
}

func TestReadFileMissing(t *testing.T) {
	_, err := ReadFile(filepath.Join(t.TempDir(), "nope.yml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yml") {
		t.Errorf("ReadFile error = %v, want one naming the file", err)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../../testdata/jobs/*.yml")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("image: a\nscript: [b, [c, [d]]]\n"))
	f.Add([]byte("image: &x a\nscript: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := Parse("fuzz.yml", data)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.yml") {
				t.Errorf("error %q does not name the file", err)
			}
			return
		}
		if verr := j.Validate(); verr != nil {
			t.Errorf("Parse accepted a job that does not validate: %v", verr)
		}
	})
}
