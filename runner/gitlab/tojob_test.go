package gitlab

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

func examplePayload(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/job-example.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestToJobExample(t *testing.T) {
	resp, err := ParseJobResponse(examplePayload(t))
	if err != nil {
		t.Fatalf("ParseJobResponse() = %v", err)
	}
	// GitLab secrets: are refused (TestToJobRefusesUnsupported); convert the rest.
	secrets := resp.Secrets
	resp.Secrets = nil
	j, err := resp.ToJob()
	resp.Secrets = secrets
	if err != nil {
		t.Fatalf("ToJob() = %v", err)
	}
	// The job holds a surrogate of its job token (TestToJobTokenSurrogate).
	if len(j.ServiceCredentials) != 1 || !strings.HasPrefix(j.ServiceCredentials[0].Surrogate, "glcbt-airlock_") {
		t.Fatalf("ServiceCredentials = %+v, want the job token's surrogate", j.ServiceCredentials)
	}
	sur := j.ServiceCredentials[0].Surrogate
	want := &job.Job{
		ID:          "7301",
		Source:      job.SourceGitLab,
		Name:        "deploy-staging",
		Repo:        "platform/web-app",
		Ref:         "main",
		SHA:         "3f1c2a9d8b7e6f5a4c3b2a1908f7e6d5c4b3a291",
		Protected:   true,
		Environment: "staging",
		Image:       "alpine:3.20",
		Pull:        []string{"if-not-present"}, // the example job asks for it (image:pull_policy)
		BeforeSHA:   "0000000000000000000000000000000000000000",
		Steps: []job.Step{
			{Name: "script", Script: []string{"./deploy.sh --env staging"}, When: job.OnSuccess, Timeout: time.Hour},
			{Name: "after_script", Script: []string{"echo cleanup"}, When: job.Always, Timeout: 5 * time.Minute, AllowFailure: true},
		},
		Variables: []job.Variable{
			{Key: "CI_JOB_ID", Value: "7301", Public: true},
			{Key: "CI_JOB_TOKEN", Value: sur, Masked: true},
			{Key: "CI_PROJECT_PATH", Value: "platform/web-app", Public: true},
			{Key: "CI_COMMIT_REF_NAME", Value: "main", Public: true},
			{Key: "CI_COMMIT_REF_PROTECTED", Value: "true", Public: true},
			{Key: "CI_ENVIRONMENT_NAME", Value: "staging", Public: true},
			{Key: "CI_SERVER_URL", Value: "https://gitlab.example.com", Public: true},
			{Key: "DEPLOY_NOTE", Value: "value with $NOT_EXPANDED", Raw: true},
			{Key: "KUBECONFIG_DATA", Value: "apiVersion: v1\nkind: Config\n", File: true},
			{Key: "REGISTRY_PASSWORD", Value: "Zx9-masked-value-1234", Masked: true},
			{Key: "VAULT_ID_TOKEN", Value: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9qZWN0X3BhdGg6cGxhdGZvcm0vd2ViLWFwcDpyZWZfdHlwZTpicmFuY2g6cmVmOm1haW4ifQ.c2ln", Masked: true},
			{Key: "AIRLOCK_SECRETS", Value: "deploy_token"},
			{Key: "AIRLOCK_EGRESS", Value: "api.example.com:443"},
		},
		Secrets: []job.SecretRequest{{Name: "deploy_token"}},
		Egress:  []string{"api.example.com:443"},
		Timeout: time.Hour,
		// GitLab's credentials for the project's registry.
		RegistryAuth: []job.RegistryAuth{{Registry: "registry.gitlab.example.com", Username: "gitlab-ci-token", Password: "glcbt-64_ExampleJobToken0000000000"}},
		ServiceCredentials: []job.ServiceCredential{{Name: "gitlab-job-token", Surrogate: sur, Value: "glcbt-64_ExampleJobToken0000000000",
			Hosts: []string{"gitlab.example.com"}, Headers: []string{"JOB-TOKEN"}, Query: []string{"job_token", "token"}, FormBody: true}},
	}
	if !reflect.DeepEqual(j, want) {
		gb, _ := json.MarshalIndent(j, "", " ")
		wb, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("ToJob() =\n%s\nwant\n%s", gb, wb)
	}

	// What the runner needs besides the normalized job.
	if resp.Token != "glcbt-64_ExampleJobToken0000000000" {
		t.Errorf("Token = %q", resp.Token)
	}
	if !strings.HasSuffix(resp.GitInfo.RepoURL, "@gitlab.example.com/platform/web-app.git") || resp.GitInfo.Depth != 20 || len(resp.GitInfo.Refspecs) != 2 {
		t.Errorf("GitInfo = depth %d refspecs %v", resp.GitInfo.Depth, resp.GitInfo.Refspecs)
	}
	if len(resp.Features.FailureReasons) != 15 || !reflect.DeepEqual(resp.Features.TokenMaskPrefixes, []string{"glpat-", "glcbt-"}) {
		t.Errorf("Features = %+v", resp.Features)
	}
	if len(resp.Artifacts) != 1 || resp.Artifacts[0].ArtifactType != "archive" || resp.Artifacts[0].ExpireIn != "7 days" {
		t.Errorf("Artifacts = %+v", resp.Artifacts)
	}
	if _, ok := resp.Secrets["DATABASE_PASSWORD"]; !ok {
		t.Errorf("Secrets = %v, want GitLab's DATABASE_PASSWORD kept for the runner", resp.Secrets)
	}
	wantMask := []string{"glcbt-64_ExampleJobToken0000000000", "Zx9-masked-value-1234", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9qZWN0X3BhdGg6cGxhdGZvcm0vd2ViLWFwcDpyZWZfdHlwZTpicmFuY2g6cmVmOm1haW4ifQ.c2ln"}
	if got := resp.MaskPhrases(); !reflect.DeepEqual(got, wantMask) {
		t.Errorf("MaskPhrases() = %q, want %q", got, wantMask)
	}
}

// mutate decodes the example into a generic map, applies f and encodes it.
func mutate(t *testing.T, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(examplePayload(t), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "secrets") // refused; see TestToJobRefusesUnsupported
	f(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func setVar(m map[string]any, key, value string) {
	vars := m["variables"].([]any)
	m["variables"] = append(vars, map[string]any{"key": key, "value": value, "public": false, "masked": false})
}

func TestToJobMalformed(t *testing.T) {
	many := func(n int, v any) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = v
		}
		return out
	}
	tests := []struct {
		name    string
		payload func(t *testing.T) []byte
		want    string
	}{
		{"not JSON", func(*testing.T) []byte { return []byte("{") }, "syntax error"},
		{"not an object", func(*testing.T) []byte { return []byte(`[1,2]`) }, "want gitlab.JobResponse"},
		{"non-UTF-8", func(*testing.T) []byte {
			return []byte("{\"id\": 1, \"token\": \"t\", \"job_info\": {\"name\": \"\xff\"}}")
		}, "not valid UTF-8"},
		{"missing id", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { delete(m, "id") }) }, "no job id"},
		{"negative id", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { m["id"] = -4 }) }, "no job id"},
		{"id as string", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { m["id"] = "7301" }) }, "field id"},
		{"missing token", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { delete(m, "token") }) }, "no job token"},
		{"steps wrong type", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { m["steps"] = map[string]any{"a": 1} })
		}, "field steps"},
		{"variable value a number", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { m["variables"] = []any{map[string]any{"key": "A", "value": 12}} })
		}, "field variables.value"},
		{"no steps", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { m["steps"] = []any{} }) }, "no script step"},
		{"steps without script", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["steps"] = []any{map[string]any{"name": "after_script", "script": []string{"x"}, "when": "always"}}
			})
		}, "no script step"},
		{"empty script", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { m["steps"] = []any{map[string]any{"name": "script", "script": []string{}}} })
		}, "script: no lines"},
		{"empty release step", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["steps"] = append(m["steps"].([]any), map[string]any{"name": "release", "script": []string{}})
			})
		}, "(release).script: no lines"},
		{"unknown step", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["steps"] = append(m["steps"].([]any), map[string]any{"name": "deploy", "script": []string{"x"}})
			})
		}, `name "deploy": unknown step`},
		{"bad when", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["steps"] = []any{map[string]any{"name": "script", "script": []string{"x"}, "when": "sometimes"}}
			})
		}, `when "sometimes"`},
		{"huge step list", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["steps"] = many(1000, map[string]any{"name": "script", "script": []string{"x"}})
			})
		}, "1000 steps"},
		{"huge variable list", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { m["variables"] = many(5000, map[string]any{"key": "A", "value": "b"}) })
		}, "5000 variables"},
		{"absurd timeout", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { m["runner_info"] = map[string]any{"timeout": 99999999999} })
		}, "runner_info.timeout"},
		{"timeout overflows", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { m["runner_info"] = map[string]any{"timeout": 1e30} })
		}, "field runner_info.timeout"},
		{"negative step timeout", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["steps"] = []any{map[string]any{"name": "script", "script": []string{"x"}, "timeout": -1}}
			})
		}, "timeout: -1 seconds"},
		{"NUL in script", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["steps"] = []any{map[string]any{"name": "script", "script": []string{"a\x00b"}}}
			})
		}, "NUL"},
		{"NUL in variable", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { setVar(m, "X", "a\x00b") }) }, "variables[13] X: value contains a NUL"},
		{"bad variable name", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { setVar(m, "1-BAD", "x") }) }, "not a valid variable name"},
		{"bad secrets declaration", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { setVar(m, "AIRLOCK_SECRETS", "ok, bad/name@env") })
		}, "AIRLOCK_SECRETS"},
		{"secret clashes with a variable", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { setVar(m, "AIRLOCK_SECRETS", "x:REGISTRY_PASSWORD") })
		}, "clashes"},
		{"service with a bad alias", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) { m["services"] = []any{map[string]any{"name": "postgres", "alias": "db;rm"}} })
		}, "not a valid host name"},
		{"CI steps", func(t *testing.T) []byte { return mutate(t, func(m map[string]any) { m["run"] = `[{"name":"x"}]` }) }, "run:"},
		{"no project", func(t *testing.T) []byte {
			return mutate(t, func(m map[string]any) {
				m["job_info"].(map[string]any)["project_full_path"] = ""
				m["git_info"].(map[string]any)["repo_url"] = "not a url"
			})
		}, "project_full_path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ParseJobResponse(tc.payload(t))
			if err == nil {
				_, err = resp.ToJob()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("converting = %v, want an error containing %q", err, tc.want)
			}
			for _, secret := range []string{"Zx9-masked-value-1234", "glcbt-64_ExampleJobToken0000000000"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q contains a secret", err)
				}
			}
		})
	}
}

// release: arrives as a step of GitLab's commands between the script
// and after_script; it runs as gitlab-runner runs it: after a script that
// succeeded, its failure the job's.
func TestToJobReleaseStep(t *testing.T) {
	payload := mutate(t, func(m map[string]any) {
		m["steps"] = []any{
			map[string]any{"name": "script", "script": []string{"make"}, "when": "on_success", "timeout": 3600},
			map[string]any{"name": "release", "script": []string{`release-cli create --name "v1" --tag-name "v1"`}, "when": "on_success", "timeout": 3600},
			map[string]any{"name": "after_script", "script": []string{"echo after"}, "when": "always"},
		}
	})
	resp, err := ParseJobResponse(payload)
	if err != nil {
		t.Fatal(err)
	}
	resp.Secrets = nil
	j, err := resp.ToJob()
	if err != nil {
		t.Fatalf("ToJob() = %v", err)
	}
	var names []string
	for _, s := range j.Steps {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, ","); got != "script,release,after_script" {
		t.Fatalf("steps = %s, want script,release,after_script", got)
	}
	r := j.Steps[1]
	if r.When != job.OnSuccess || r.AllowFailure || r.Timeout != time.Hour || len(r.Script) != 1 || !strings.HasPrefix(r.Script[0], "release-cli create") {
		t.Errorf("release step = %+v", r)
	}
}

func TestParseJobResponseKeepsIDForFailing(t *testing.T) {
	payload := mutate(t, func(m map[string]any) { m["steps"] = "nope" })
	_, err := ParseJobResponse(payload)
	var pe *PayloadError
	if !errors.As(err, &pe) || pe.ID != 7301 || pe.Token != "glcbt-64_ExampleJobToken0000000000" {
		t.Fatalf("ParseJobResponse() = %v, want a PayloadError with id 7301 and the token", err)
	}
}

func TestToJobFallbacks(t *testing.T) {
	payload := mutate(t, func(m map[string]any) {
		m["job_info"].(map[string]any)["project_full_path"] = ""
		delete(m["git_info"].(map[string]any), "protected")
		m["runner_info"] = map[string]any{}
		m["image"] = map[string]any{}
		m["steps"] = []any{
			map[string]any{"name": "script", "script": []string{"x"}},
			map[string]any{"name": "after_script", "script": []string{}},
		}
	})
	resp, err := ParseJobResponse(payload)
	if err != nil {
		t.Fatal(err)
	}
	j, err := resp.ToJob()
	if err != nil {
		t.Fatalf("ToJob() = %v", err)
	}
	if j.Repo != "platform/web-app" {
		t.Errorf("Repo = %q, want platform/web-app from repo_url", j.Repo)
	}
	if !j.Protected {
		t.Error("Protected = false, want true from CI_COMMIT_REF_PROTECTED")
	}
	if j.Timeout != defaultJobTimeout {
		t.Errorf("Timeout = %s, want the default %s", j.Timeout, defaultJobTimeout)
	}
	if j.Image != "" {
		t.Errorf("Image = %q, want empty (runner default)", j.Image)
	}
	if len(j.Steps) != 1 || j.Steps[0].When != job.OnSuccess {
		t.Errorf("Steps = %+v, want one on_success script (empty after_script dropped)", j.Steps)
	}
}

func TestParseSecrets(t *testing.T) {
	tests := []struct {
		in      string
		want    []job.SecretRequest
		wantErr string
	}{
		{"", nil, ""},
		{"deploy_token", []job.SecretRequest{{Name: "deploy_token"}}, ""},
		{"a, b:B_VAR  c@proxy,\nd:D@file", []job.SecretRequest{{Name: "a"}, {Name: "b", Var: "B_VAR"}, {Name: "c", Delivery: job.DeliverProxy}, {Name: "d", Var: "D", Delivery: job.DeliverFile}}, ""},
		{"a@mail", nil, "delivery must be env, file or proxy"},
		{"a@", nil, "delivery"},
		{"a:1X", nil, "not a valid variable name"},
		{":VAR", nil, "want NAME"},
		{"../etc", nil, "want NAME"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSecrets(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseSecrets(%q) error = %v, want %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseSecrets(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func FuzzToJob(f *testing.F) {
	f.Add(examplePayload(f))
	f.Add([]byte(`{"id":1,"token":"t","steps":[{"name":"script","script":["x"]}],"job_info":{"project_full_path":"a/b"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := ParseJobResponse(data)
		if err != nil {
			return
		}
		j, err := resp.ToJob()
		if err != nil {
			return
		}
		if j.Image == "" {
			j.Image = "default"
		}
		if err := j.Validate(); err != nil {
			t.Fatalf("ToJob() returned a job that does not validate: %v", err)
		}
		if j.ID == "" || j.Source != job.SourceGitLab || j.Timeout <= 0 || j.Timeout > maxJobTimeout {
			t.Fatalf("ToJob() = id %q source %q timeout %s", j.ID, j.Source, j.Timeout)
		}
	})
}

func TestToJobChangeBase(t *testing.T) {
	for _, tc := range []struct {
		name string
		vars []JobVariable
		want string
	}{
		{"push", nil, "1111111111111111111111111111111111111111"},
		{"merge request", []JobVariable{{Key: "CI_MERGE_REQUEST_DIFF_BASE_SHA", Value: "2222222222222222222222222222222222222222"}}, "2222222222222222222222222222222222222222"},
	} {
		resp, err := ParseJobResponse(examplePayload(t))
		if err != nil {
			t.Fatal(err)
		}
		resp.GitInfo.BeforeSHA = "1111111111111111111111111111111111111111"
		resp.Variables = append(resp.Variables, tc.vars...)
		j, err := resp.ToJob()
		if err != nil {
			t.Fatal(err)
		}
		if j.BeforeSHA != tc.want {
			t.Errorf("%s: BeforeSHA = %q, want %q (the leak scan's base)", tc.name, j.BeforeSHA, tc.want)
		}
	}
}
