package job

import (
	"strings"
	"testing"
)

func validJob() *Job {
	return &Job{ID: "j1", Source: SourceGitHub, Image: "img", Steps: []Step{
		{Name: "a", Kind: StepRun, ID: "a", Run: "echo hi", When: OnSuccess},
		{Name: "b", Kind: StepUses, Uses: "./act", When: OnSuccess, Env: []KV{{"X", "${{ 1 }}"}}},
	}}
}

func TestValidateStepKinds(t *testing.T) {
	if err := validJob().Validate(); err != nil {
		t.Fatalf("valid job: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(j *Job)
		want string
	}{
		{"empty run", func(j *Job) { j.Steps[0].Run = " " }, "run: empty script"},
		{"run and uses", func(j *Job) { j.Steps[0].Uses = "x@v1" }, "either run or uses"},
		{"uses without action", func(j *Job) { j.Steps[1].Uses = "" }, "uses: required"},
		{"uses with run", func(j *Job) { j.Steps[1].Run = "x" }, "either run or uses"},
		{"unknown kind", func(j *Job) { j.Steps[0].Kind = "docker" }, `kind "docker"`},
		{"script on a run step", func(j *Job) { j.Steps[0].Script = []string{"x"} }, "only for script steps"},
		{"bad env name", func(j *Job) { j.Steps[1].Env = []KV{{"1X", "v"}} }, `env "1X"`},
		{"duplicate id", func(j *Job) { j.Steps[1].ID = "a" }, "duplicate step id"},
		{"script step without lines", func(j *Job) { j.Steps[0].Kind, j.Steps[0].Run = StepScript, "" }, "at least one line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := validJob()
			tc.edit(j)
			err := j.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
