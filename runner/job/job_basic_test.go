package job

import (
	"strings"
	"testing"
	"time"
)

func baseJob() *Job {
	return &Job{
		ID: "gitlab-1a2b3c4d-42", Source: SourceGitLab, Repo: "group/app", Ref: "main", Image: "alpine:3",
		Steps:     []Step{{Name: "build", Script: []string{"make"}, When: OnSuccess}, {Name: "after", Script: []string{"true"}, When: Always}},
		Variables: []Variable{{Key: "A", Value: "x"}, {Key: "TOKEN", Value: "masked-value", Masked: true}, {Key: "EMPTY", Masked: true}},
		Secrets:   []SecretRequest{{Name: "deploy-token", Delivery: DeliverProxy}},
		Egress:    []string{"registry.test:443"},
		Timeout:   time.Hour,
	}
}

func TestValidate(t *testing.T) {
	if err := baseJob().Validate(); err != nil {
		t.Fatalf("Validate(valid job) = %v", err)
	}
	tests := []struct {
		name string
		mod  func(*Job)
		want string
	}{
		{"bad id", func(j *Job) { j.ID = "../x" }, `id "../x"`},
		{"bad source", func(j *Job) { j.Source = "svn" }, `source "svn"`},
		{"no image", func(j *Job) { j.Image = " " }, "image: required"},
		{"negative timeout", func(j *Job) { j.Timeout = -1 }, "timeout: must not be negative"},
		{"bad user", func(j *Job) { j.User = "root --privileged" }, "user: must be a user name or uid"},
		{"no steps", func(j *Job) { j.Steps = nil }, "at least one step"},
		{"duplicate step", func(j *Job) { j.Steps[1].Name = "build" }, `duplicate step name`},
		{"empty script", func(j *Job) { j.Steps[0].Script = nil }, "(build).script"},
		{"bad when", func(j *Job) { j.Steps[0].When = "sometimes" }, `when "sometimes"`},
		{"only always steps", func(j *Job) { j.Steps[0].When = Always }, "no step runs on success"},
		{"bad variable", func(j *Job) { j.Variables[0].Key = "1A" }, `variables[0] "1A"`},
		{"bad secret", func(j *Job) { j.Secrets[0].Name = "-x" }, `secrets[0] "-x"`},
		{"secret twice", func(j *Job) { j.Secrets = append(j.Secrets, j.Secrets[0]) }, "declared twice"},
		{"secret var clash", func(j *Job) { j.Secrets[0].Var = "A" }, "clashes with a job variable"},
		{"bad delivery", func(j *Job) { j.Secrets[0].Delivery = "post" }, `delivery "post"`},
		{"empty egress", func(j *Job) { j.Egress = append(j.Egress, " ") }, "egress[1]: empty entry"},
		{"short surrogate", func(j *Job) {
			j.ServiceCredentials = []ServiceCredential{{Name: "tok", Surrogate: "short", Value: "service-value-0123456789"}}
		}, "service_credentials[0] tok: want a value and a surrogate of at least 16"},
		{"surrogate is the value", func(j *Job) {
			j.ServiceCredentials = []ServiceCredential{{Name: "tok", Surrogate: "service-value-0123456789", Value: "service-value-0123456789"}}
		}, "differs from it"},
		{"bad credential name", func(j *Job) {
			j.ServiceCredentials = []ServiceCredential{{Name: "a b", Surrogate: "surrogate-0123456789", Value: "service-value-0123456789"}}
		}, `service_credentials[0] "a b"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := baseJob()
			tc.mod(j)
			err := j.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Every problem at once.
	j := baseJob()
	j.Image, j.Timeout = "", -1
	if err := j.Validate(); err == nil || !strings.Contains(err.Error(), "image") || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("Validate() = %v, want both problems", err)
	}
}

func TestMasked(t *testing.T) {
	if got := baseJob().Masked(); len(got) != 1 || got[0] != "masked-value" {
		t.Errorf("Masked() = %q, want the one non-empty masked value", got)
	}
}

func TestVarNames(t *testing.T) {
	tests := []struct{ secret, want string }{
		{"deploy-token", "DEPLOY_TOKEN"},
		{"db.password", "DB_PASSWORD"},
		{"1st", "_1ST"},
	}
	for _, tc := range tests {
		if got := DefaultVarName(tc.secret); got != tc.want || !ValidVarName(got) {
			t.Errorf("DefaultVarName(%q) = %q, want %q (a valid name)", tc.secret, got, tc.want)
		}
	}
	if got := (SecretRequest{Name: "x", Var: "MY_X"}).VarName(); got != "MY_X" {
		t.Errorf("VarName with Var = %q", got)
	}
	for _, w := range []When{OnSuccess, OnFailure, Always} {
		if !w.Valid() {
			t.Errorf("%q.Valid() = false", w)
		}
	}
	if When("").Valid() || Source("").Valid() || Delivery("x").Valid() || !Delivery("").Valid() {
		t.Error("Valid() of an unknown value is true, or of \"\" delivery false")
	}
}
