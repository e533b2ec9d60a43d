package github

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"testing"
)

func loadMessage(t *testing.T) *AgentJobRequestMessage {
	t.Helper()
	b, err := os.ReadFile("testdata/job-message.json")
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeJobMessage(b)
	if err != nil {
		t.Fatalf("DecodeJobMessage: %v", err)
	}
	return m
}

func TestDecodeJobMessage(t *testing.T) {
	m := loadMessage(t)
	if m.JobID != "5e2f9a70-2222-5b2e-8c7d-3c1e5c2f1b02" || m.RequestID != 5000 || m.Plan.PlanID == "" {
		t.Errorf("ids = %q %d %q", m.JobID, m.RequestID, m.Plan.PlanID)
	}
	if got := m.JobToken(); got != "eyJhbGciOiJSUzI1NiJ9.job-token-payload.sig" {
		t.Errorf("JobToken() = %q", got)
	}
	if got := m.RunServiceURL(); got != "http://127.0.0.1:9/run-service/" {
		t.Errorf("RunServiceURL() = %q", got)
	}
	if got := m.ResultsURL(); got != "http://127.0.0.1:9/results/" {
		t.Errorf("ResultsURL() = %q", got)
	}
	if got := m.LaunchURL(); got != "http://127.0.0.1:9/launch/" {
		t.Errorf("LaunchURL() = %q", got)
	}
	if !bool(m.SystemConnection().IsReady) {
		t.Error(`isReady "True" decoded as false`)
	}
	if v, ok := m.Variables.Get("SYSTEM.GITHUB.JOB"); !ok || v.Value != "build" {
		t.Errorf("case-insensitive variable lookup = %+v, %v", v, ok)
	}
	if got := m.Variables.Value("system.runner.lowdiskspacethreshold"); got != "100" {
		t.Errorf("numeric variable value = %q, want 100", got)
	}
	sec := m.Secrets()
	if sec["DEPLOY_KEY"] != "s3cr3t-deploy-value" || sec["GITHUB_TOKEN"] == "" {
		t.Errorf("Secrets() = %v", sec)
	}
	if _, ok := sec["SYSTEM.GITHUB.TOKEN"]; ok {
		t.Error("Secrets() includes system.github.token under its own name")
	}
	mask := m.MaskValues()
	for _, want := range []string{"s3cr3t-deploy-value", "ghs_0123456789abcdefghijklmnopqrstuvwxyz", "eyJhbGciOiJSUzI1NiJ9.job-token-payload.sig"} {
		if !slices.Contains(mask, want) {
			t.Errorf("MaskValues() lacks %q", want)
		}
	}

	gh := m.ContextData.Get("GitHub")
	if got := gh.StringAt("event", "pull_request", "head", "repo", "fork"); got != "true" {
		t.Errorf("github.event.pull_request.head.repo.fork = %q", got)
	}
	if got := gh.StringAt("EVENT_NAME"); got != "pull_request" {
		t.Errorf("case-insensitive dictionary key = %q", got)
	}
	if labels := gh.Get("event").Get("pull_request").Get("labels"); labels == nil || labels.Kind != ContextArray || len(labels.Items) != 2 {
		t.Errorf("labels = %+v", labels)
	}
	if m.ContextData.Get("inputs") != nil {
		t.Error("null context decoded as non-nil")
	}

	if len(m.Steps) != 5 {
		t.Fatalf("%d steps, want 5", len(m.Steps))
	}
	kinds := []string{}
	for _, s := range m.Steps {
		if !s.IsAction() {
			t.Errorf("step %s: IsAction() = false", s.ID)
		}
		kinds = append(kinds, s.Reference.Kind())
	}
	if want := []string{"script", "script", "repository", "repository", "containerregistry"}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("reference kinds = %v, want %v", kinds, want)
	}
	s0 := m.Steps[0].Inputs.Get("script")
	if s0 == nil || s0.Type != TokenExpression || s0.Expr != `format('echo "v=1.{0}" >> "$GITHUB_OUTPUT"', github.run_number)` {
		t.Errorf("step 0 script = %+v", s0)
	}
	s1 := m.Steps[1]
	if lit := s1.Inputs.Get("script"); lit.Type != TokenString || lit.Lit != "make test" || lit.Line != 20 {
		t.Errorf("positioned literal = %+v", lit)
	}
	if s1.TimeoutInMinutes.Type != TokenNumber || s1.TimeoutInMinutes.Num != 10 {
		t.Errorf("timeout = %+v", s1.TimeoutInMinutes)
	}
	if s1.ContinueOnError.Type != TokenExpression {
		t.Errorf("continueOnError = %+v", s1.ContinueOnError)
	}
	if v := m.Steps[2].Inputs.Get("fetch-depth"); v.Type != TokenNumber || v.Num != 0 {
		t.Errorf("bare number input = %+v", v)
	}
	if r := m.Steps[3].Reference; r.RepositoryType != "self" || r.Path != "./.github/actions/hello" {
		t.Errorf("local action reference = %+v", r)
	}
	if got, _ := m.JobContainer.Literal(); got != "airlock-test:busybox" {
		t.Errorf("jobContainer = %q", got)
	}
	run := m.Defaults[0].Get("run")
	if sh, _ := run.Get("shell").Literal(); sh != "sh" {
		t.Errorf("defaults.run.shell = %q", sh)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	m := loadMessage(t)
	for i, s := range m.Steps {
		b, err := json.Marshal(s.Inputs)
		if err != nil {
			t.Fatal(err)
		}
		var back TemplateToken
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("step %d: re-decoding %s: %v", i, b, err)
		}
		if s.Inputs == nil {
			continue
		}
		if !reflect.DeepEqual(*s.Inputs, back) {
			t.Errorf("step %d inputs: round trip changed\n%+v\n%+v", i, *s.Inputs, back)
		}
	}
	b, err := json.Marshal(m.ContextData)
	if err != nil {
		t.Fatal(err)
	}
	var back ContextMap
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m.ContextData, back) {
		t.Error("context data round trip changed")
	}
}

func TestDecodeJobMessageErrors(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"not json", `{`},
		{"no job id", `{"plan":{"planId":"p"},"resources":{"endpoints":[{"name":"SystemVssConnection"}]}}`},
		{"no connection", `{"jobId":"j","plan":{"planId":"p"}}`},
		{"bad token type", `{"jobId":"j","plan":{"planId":"p"},"resources":{"endpoints":[{"name":"SystemVssConnection"}]},"jobOutputs":{"type":99}}`},
		{"expression without expr", `{"jobId":"j","plan":{"planId":"p"},"resources":{"endpoints":[{"name":"SystemVssConnection"}]},"jobOutputs":{"type":3}}`},
		{"bad bool", `{"jobId":"j","plan":{"planId":"p"},"resources":{"endpoints":[{"name":"SystemVssConnection","isReady":"maybe"}]}}`},
		{"context without t", `{"jobId":"j","plan":{"planId":"p"},"resources":{"endpoints":[{"name":"SystemVssConnection"}]},"contextData":{"github":{"d":[]}}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeJobMessage([]byte(tc.in)); err == nil {
				t.Errorf("DecodeJobMessage(%s) succeeded", tc.in)
			}
		})
	}
	bom := "\xef\xbb\xbf" + `{"jobId":"j","plan":{"planId":"p"},"resources":{"endpoints":[{"name":"systemvssconnection"}]}}`
	if _, err := DecodeJobMessage([]byte(bom)); err != nil {
		t.Errorf("BOM-prefixed message: %v", err)
	}
}
