package github

import (
	"strings"

	"github.com/airlock-ci/airlock/runner/github/expr"
	"github.com/airlock-ci/airlock/runner/job"
)

// Value converts context data into an expression value.
func (c *ContextData) Value() any {
	if c == nil {
		return nil
	}
	switch c.Kind {
	case ContextString:
		return c.Str
	case ContextBoolean:
		return c.Bool
	case ContextNumber:
		return c.Num
	case ContextArray:
		out := make([]any, len(c.Items))
		for i, it := range c.Items {
			out[i] = it.Value()
		}
		return out
	}
	o := expr.NewObject()
	for _, p := range c.Pairs {
		o.Set(p.Key, p.Value.Value())
	}
	return o
}

// baseEnv returns the contexts the message gives (github, needs,
// strategy, matrix, inputs, vars), secrets, and an empty env. A value
// the job holds by surrogate (j's service credentials; nil: none) is the
// surrogate there.
func (m *AgentJobRequestMessage) baseEnv(status *expr.Status, j *job.Job) *expr.Env {
	ctx := map[string]any{}
	for k, v := range m.ContextData {
		ctx[strings.ToLower(k)] = v.Value()
	}
	gh, _ := ctx["github"].(*expr.Object)
	if gh == nil {
		gh = expr.NewObject()
		ctx["github"] = gh
	}
	if t := m.GitHubToken(); t != "" {
		gh.Set("token", surrogateOf(j, t))
	}
	sec := expr.NewObject()
	secrets := m.jobSecrets(j)
	for _, k := range sortedKeys(secrets) {
		sec.Set(k, secrets[k])
	}
	ctx["secrets"] = sec
	ctx["env"] = expr.NewObject()
	env := &expr.Env{Contexts: ctx}
	if status != nil {
		env.Status = *status
	}
	return env
}
