package gitlab

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// The job token reaches the job only as its surrogate, in every variable
// that held it (the job's and its services'), while the runner keeps the
// token; the surrogate is bound to the GitLab instance's hosts, where
// GitLab takes the token, and over plain HTTP when GitLab is on it.
func TestToJobTokenSurrogate(t *testing.T) {
	const token = "glcbt-64_ExampleJobToken0000000000"
	payload := mutate(t, func(m map[string]any) {
		for _, kv := range [][2]string{
			{"CI_SERVER_URL", "http://GitLab.Example.com:8080"},
			{"CI_API_V4_URL", "http://gitlab.example.com:8080/api/v4"},
			{"CI_REGISTRY", "registry.example.com:5050"},
			{"CI_REGISTRY_PASSWORD", token},
			{"CI_DEPENDENCY_PROXY_SERVER", "gitlab.example.com:443"},
			{"CI_DEPENDENCY_PROXY_PASSWORD", token},
			{"CI_REPOSITORY_URL", "http://gitlab-ci-token:" + token + "@git.example.com/platform/web-app.git"},
			{"NETRC_LINE", "machine gitlab.example.com login gitlab-ci-token password " + token},
		} {
			setVar(m, kv[0], kv[1])
		}
		m["services"] = []any{map[string]any{"name": "postgres:16",
			"variables": []any{map[string]any{"key": "TOKEN", "value": "$CI_JOB_TOKEN"}}}}
	})
	resp, err := ParseJobResponse(payload)
	if err != nil {
		t.Fatal(err)
	}
	j, err := resp.ToJob()
	if err != nil {
		t.Fatalf("ToJob() = %v", err)
	}
	if resp.Token != token {
		t.Errorf("the runner's token = %q, want the job token", resp.Token)
	}
	if len(j.ServiceCredentials) != 1 {
		t.Fatalf("ServiceCredentials = %+v, want one", j.ServiceCredentials)
	}
	c := j.ServiceCredentials[0]
	sur := c.Surrogate
	if c.Name != "gitlab-job-token" || c.Value != token || !strings.HasPrefix(sur, "glcbt-airlock_") || len(sur) < 40 || strings.Contains(sur, token) {
		t.Errorf("credential %s: value %v, surrogate %q, want the token and a distinct surrogate", c.Name, c.Value == token, sur)
	}
	wantHosts := []string{"gitlab.example.com", "git.example.com", "registry.example.com"}
	if !reflect.DeepEqual(c.Hosts, wantHosts) || !c.PlainHTTP ||
		!reflect.DeepEqual(c.Headers, []string{"JOB-TOKEN"}) || !reflect.DeepEqual(c.Query, []string{"job_token", "token"}) || !c.FormBody {
		t.Errorf("credential hosts %v plain %v headers %v query %v, want %v over plain HTTP in JOB-TOKEN and job_token",
			c.Hosts, c.PlainHTTP, c.Headers, c.Query, wantHosts)
	}
	want := map[string]string{
		"CI_JOB_TOKEN":                 sur,
		"CI_REGISTRY_PASSWORD":         sur,
		"CI_DEPENDENCY_PROXY_PASSWORD": sur,
		"CI_REPOSITORY_URL":            "http://gitlab-ci-token:" + sur + "@git.example.com/platform/web-app.git",
		"NETRC_LINE":                   "machine gitlab.example.com login gitlab-ci-token password " + sur,
	}
	for _, v := range j.Variables {
		if strings.Contains(v.Value, token) {
			t.Errorf("variable %s holds the job token", v.Key)
		}
		if w, ok := want[v.Key]; ok && v.Value != w {
			t.Errorf("variable %s = %q, want %q", v.Key, v.Value, w)
		}
	}
	if len(j.Services) != 1 || len(j.Services[0].Variables) != 1 || j.Services[0].Variables[0].Value != sur {
		t.Errorf("service variables = %+v, want TOKEN = the surrogate", j.Services)
	}
	// GitLab's registry credentials are the runner's, for its pulls.
	if len(j.RegistryAuth) != 1 || j.RegistryAuth[0].Password != token {
		t.Errorf("RegistryAuth = %d entries, want the job token for the runner's pulls", len(j.RegistryAuth))
	}

	// Over HTTPS no plain HTTP; a second conversion makes a new surrogate.
	resp.Variables = resp.Variables[:0]
	j2, err := resp.ToJob()
	if err != nil {
		t.Fatal(err)
	}
	if c2 := j2.ServiceCredentials[0]; c2.PlainHTTP || c2.Surrogate == sur || !reflect.DeepEqual(c2.Hosts, []string{"gitlab.example.com"}) {
		t.Errorf("without variables: plain %v, same surrogate %v, hosts %v; want https, a new surrogate, the repository's host",
			c2.PlainHTTP, c2.Surrogate == sur, c2.Hosts)
	}

	// A GitLab addressed by IP gives no name to bind: the job keeps the
	// token, as with gitlab-runner.
	resp.Variables = []JobVariable{{Key: "CI_JOB_TOKEN", Value: token}, {Key: "CI_SERVER_URL", Value: "https://10.0.0.5"}}
	resp.GitInfo.RepoURL = "https://gitlab-ci-token:" + token + "@10.0.0.5/platform/web-app.git"
	j4, err := resp.ToJob()
	if err != nil {
		t.Fatal(err)
	}
	if len(j4.ServiceCredentials) != 0 || j4.Variables[0].Value != token {
		t.Errorf("GitLab by address: %d credentials, CI_JOB_TOKEN is the token %v; want none and the token", len(j4.ServiceCredentials), j4.Variables[0].Value == token)
	}

	// A token too short to replace safely is left as it is.
	resp.Token = "short-token"
	resp.Variables, resp.GitInfo.RepoURL = nil, "https://gitlab.example.com/platform/web-app.git"
	j3, err := resp.ToJob()
	if err != nil {
		t.Fatal(err)
	}
	if len(j3.ServiceCredentials) != 0 {
		t.Errorf("a %d-byte token got a surrogate", len(resp.Token))
	}
}

// GitLab's KUBECONFIG for agent access (a file variable) holds
// ci:<agent id>:<job token> for KAS's Kubernetes proxy: the token becomes
// the surrogate there too, and KAS's host is bound when GitLab puts KAS
// there (one of its hosts, kas. on one or on its parent domain), never
// another server a job's own KUBECONFIG names.
func TestToJobTokenKubeconfig(t *testing.T) {
	const token = "glcbt-64_ExampleJobToken0000000000"
	kubeconfig := func(servers ...string) string {
		s := "apiVersion: v1\nkind: Config\nclusters:\n"
		for i, srv := range servers {
			s += fmt.Sprintf("- name: c%d\n  cluster:\n    server: %s\n", i, srv)
		}
		return s + "users:\n- name: agent:7\n  user:\n    token: ci:7:" + token + "\n"
	}
	for _, tc := range []struct {
		name       string
		kubeconfig string
		want       []string
	}{
		{"kas beside gitlab", kubeconfig("https://kas.example.com/k8s-proxy/"), []string{"gitlab.example.com", "kas.example.com"}},
		{"kas under gitlab", kubeconfig("https://kas.gitlab.example.com/k8s-proxy", "https://gitlab.example.com/-/kubernetes-agent/k8s-proxy/"),
			[]string{"gitlab.example.com", "kas.gitlab.example.com"}},
		{"another server", kubeconfig("https://evil.example.net/k8s-proxy", "https://kas.evil.example.net", "http://kas.example.com"), []string{"gitlab.example.com"}},
		{"not yaml", "clusters: [\n" + token, []string{"gitlab.example.com"}},
		{"without the token", strings.ReplaceAll(kubeconfig("https://kas.example.com"), token, "other-token-0000000000"), []string{"gitlab.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ParseJobResponse(mutate(t, func(m map[string]any) {
				setVar(m, "CI_SERVER_URL", "https://gitlab.example.com")
				m["variables"] = append(m["variables"].([]any), map[string]any{"key": "KUBECONFIG", "value": tc.kubeconfig, "file": true})
			}))
			if err != nil {
				t.Fatal(err)
			}
			resp.Token = token
			resp.GitInfo.RepoURL = "https://gitlab.example.com/platform/web-app.git"
			j, err := resp.ToJob()
			if err != nil {
				t.Fatal(err)
			}
			if len(j.ServiceCredentials) != 1 {
				t.Fatalf("ServiceCredentials = %d, want one", len(j.ServiceCredentials))
			}
			c := j.ServiceCredentials[0]
			if !reflect.DeepEqual(c.Hosts, tc.want) {
				t.Errorf("hosts = %v, want %v", c.Hosts, tc.want)
			}
			for _, v := range j.Variables {
				if v.Key == "KUBECONFIG" && (strings.Contains(v.Value, token) || (strings.Contains(tc.kubeconfig, token) && !strings.Contains(v.Value, c.Surrogate))) {
					t.Errorf("KUBECONFIG = %q, want the surrogate for the token", v.Value)
				}
			}
		})
	}
}
