package fakegithub

import (
	"regexp"
	"sort"
	"strings"
)

// The job message (AgentJobRequestMessage) in the wire encodings GitHub
// uses: TemplateTokens for steps, env and containers ({"type":3,"expr"}
// for expressions, a mixed string as one format() expression, mappings
// with PascalCase Key/Value) and PipelineContextData for contextData
// (t/a/d/k/v).

var exprRE = regexp.MustCompile(`\$\{\{(.*?)\}\}`)

// templateString encodes a string that may hold ${{ }} expressions as the
// server compiles it: a literal, one expression, or one format() call.
func templateString(s string) any {
	locs := exprRE.FindAllStringSubmatchIndex(s, -1)
	if len(locs) == 0 {
		return s
	}
	if len(locs) == 1 && locs[0][0] == 0 && locs[0][1] == len(s) {
		return map[string]any{"type": 3, "expr": strings.TrimSpace(s[locs[0][2]:locs[0][3]])}
	}
	var format strings.Builder
	var args []string
	last := 0
	esc := strings.NewReplacer("'", "''", "{", "{{", "}", "}}")
	for i, l := range locs {
		format.WriteString(esc.Replace(s[last:l[0]]))
		format.WriteString("{" + itoa(i) + "}")
		args = append(args, strings.TrimSpace(s[l[2]:l[3]]))
		last = l[1]
	}
	format.WriteString(esc.Replace(s[last:]))
	return map[string]any{"type": 3, "expr": "format('" + format.String() + "', " + strings.Join(args, ", ") + ")"}
}

func itoa(i int) string {
	const d = "0123456789"
	if i < 10 {
		return d[i : i+1]
	}
	return itoa(i/10) + d[i%10:i%10+1]
}

// templateMap encodes a string map as a mapping token (sorted keys).
func templateMap(m map[string]string) any {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	entries := []map[string]any{}
	for _, k := range keys {
		entries = append(entries, map[string]any{"Key": k, "Value": templateString(m[k])})
	}
	return map[string]any{"type": 2, "map": entries}
}

// contextDict encodes a dictionary as PipelineContextData.
func contextDict(m map[string]any) any {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	d := []map[string]any{}
	for _, k := range keys {
		d = append(d, map[string]any{"k": k, "v": contextValue(m[k])})
	}
	return map[string]any{"t": 2, "d": d}
}

func contextValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return contextDict(x)
	case []any:
		if len(x) == 0 {
			return map[string]any{"t": 1}
		}
		a := make([]any, len(x))
		for i := range x {
			a[i] = contextValue(x[i])
		}
		return map[string]any{"t": 1, "a": a}
	case map[string]string:
		m := map[string]any{}
		for k, s := range x {
			m[k] = s
		}
		return contextDict(m)
	}
	return v
}

// jobMessage builds the message acquirejob answers, under f.mu.
func (f *Runners) jobMessage(j *Job, run *Runner) map[string]any {
	spec := j.Spec
	owner := spec.Repo[:strings.IndexByte(spec.Repo+"/", '/')]
	refName := spec.Ref[strings.LastIndexByte(spec.Ref, '/')+1:]
	event := spec.Event
	if event == nil {
		event = map[string]any{"ref": spec.Ref, "repository": map[string]any{"full_name": spec.Repo}}
	}
	github := map[string]any{
		"event": event, "event_name": spec.EventName, "server_url": f.URL, "api_url": f.URL + "/api/v3",
		"graphql_url": f.URL + "/api/graphql", "workflow": "CI", "workflow_ref": spec.Repo + "/.github/workflows/ci.yml@" + spec.Ref,
		"workflow_sha": "0123456789abcdef0123456789abcdef01234567", "repository": spec.Repo, "repository_id": "4711",
		"repository_owner": owner, "repository_owner_id": "42", "ref": spec.Ref, "ref_name": refName, "ref_type": "branch",
		"ref_protected": "false", "sha": "0123456789abcdef0123456789abcdef01234567", "head_ref": "", "base_ref": "",
		"run_id": "9001", "run_number": "7", "run_attempt": "1", "retention_days": "90", "actor": "octocat",
		"actor_id": "1", "triggering_actor": "octocat", "job": spec.Name, "token": j.GitHubToken,
	}
	variables := map[string]any{
		"system.github.token":                 map[string]any{"value": j.GitHubToken, "isSecret": true},
		"system.github.job":                   map[string]any{"value": spec.Name},
		"system.github.results_endpoint":      map[string]any{"value": f.URL + "/results/"},
		"system.github.launch_endpoint":       map[string]any{"value": f.URL + "/launch/"},
		"system.runner.lowdiskspacethreshold": map[string]any{"value": "100"},
	}
	for k, v := range spec.Secrets {
		variables[k] = map[string]any{"value": v, "isSecret": true}
	}
	var steps []map[string]any
	for i, s := range spec.Steps {
		cond := s.If
		if cond == "" {
			cond = "success()"
		}
		st := map[string]any{"type": "action", "id": s.ID, "name": "__run_" + itoa(i+1), "contextName": "__run_" + itoa(i+1),
			"displayNameToken": templateString(s.Name), "condition": cond, "continueOnError": s.ContinueOnError,
			"timeoutInMinutes": s.TimeoutMinutes}
		if s.Run != "" {
			st["reference"] = map[string]any{"type": "script"}
			st["inputs"] = templateMap(map[string]string{"script": s.Run})
		} else {
			ref := map[string]any{"type": "repository"}
			if img, ok := strings.CutPrefix(s.Uses, "docker://"); ok {
				ref = map[string]any{"type": "containerRegistry", "image": img}
			} else if strings.HasPrefix(s.Uses, "./") {
				ref["repositoryType"], ref["path"] = "self", s.Uses
			} else {
				name, version, _ := strings.Cut(s.Uses, "@")
				ref["name"], ref["ref"], ref["repositoryType"], ref["path"] = name, version, "GitHub", ""
			}
			st["reference"] = ref
			st["inputs"] = templateMap(s.With)
		}
		if len(s.Env) > 0 {
			st["environment"] = templateMap(s.Env)
		}
		steps = append(steps, st)
	}
	msg := map[string]any{
		"messageType": "RunnerJobRequest",
		"plan":        map[string]any{"scopeIdentifier": guid(), "planType": "actions", "planId": j.PlanID, "version": 0},
		"timeline":    map[string]any{"id": guid(), "changeId": 1},
		"jobId":       j.ID, "jobDisplayName": spec.Name, "jobName": spec.Name, "requestId": 5000, "lockedUntil": "0001-01-01T00:00:00",
		"resources": map[string]any{"endpoints": []map[string]any{{
			"name": "SystemVssConnection", "url": f.URL + "/run/",
			"authorization": map[string]any{"scheme": "OAuth", "parameters": map[string]string{"AccessToken": j.Token}},
			"data": map[string]string{"ServerId": guid(), "ServerName": "actions", "CacheServerUrl": f.URL + "/cache/",
				"ResultsServiceUrl": f.URL + "/results/", "PipelinesServiceUrl": f.URL + "/pipelines/",
				"FeedStreamUrl": "ws://" + strings.TrimPrefix(f.URL, "http://") + "/feed/" + j.ID},
			"isShared": false, "isReady": true,
		}}, "repositories": []any{}, "containers": []any{}},
		"variables":      variables,
		"contextData":    map[string]any{"github": contextDict(github), "needs": map[string]any{"t": 2}, "strategy": map[string]any{"t": 2}, "matrix": nil, "inputs": map[string]any{"t": 2}, "vars": map[string]any{"t": 2}},
		"mask":           []map[string]string{{"type": "regex", "value": j.Token}},
		"steps":          steps,
		"fileTable":      []string{".github/workflows/ci.yml"},
		"workspace":      map[string]any{},
		"billingOwnerId": "acme",
	}
	if len(spec.Env) > 0 {
		msg["environmentVariables"] = []any{templateMap(spec.Env)}
	}
	if spec.Container != "" {
		msg["jobContainer"] = map[string]any{"type": 2, "map": []map[string]any{{"Key": "image", "Value": spec.Container}}}
	}
	return msg
}
