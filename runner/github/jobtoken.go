package github

import (
	"crypto/rand"
	"encoding/base64"
	"net/url"
	"strings"

	"github.com/airlock-ci/airlock/runner/job"
)

// jobTokenCredential is the job's credential name for the job token.
const jobTokenCredential = "github-job-token"

// jobTokenSurrogate stands for the job token in the job: a JWT keeps its
// header and claims (the actions toolkit reads its scopes to find the
// run's backend ids) with a random signature, which no service accepts;
// anything else is replaced whole. The gateway swaps it back for the
// token on requests to the job's service hosts only.
func jobTokenSurrogate(token string) string {
	b := make([]byte, 32)
	rand.Read(b)
	sig := base64.RawURLEncoding.EncodeToString(b)
	if parts := strings.Split(token, "."); len(parts) == 3 && parts[0] != "" && parts[1] != "" {
		return parts[0] + "." + parts[1] + "." + sig
	}
	return "airlock-surrogate-" + sig
}

// jobTokenHosts are the host names of the services the job's code talks
// to with the job token: the run service, results, cache and OIDC.
func (m *AgentJobRequestMessage) jobTokenHosts() []string {
	conn := m.SystemConnection()
	seen := map[string]bool{}
	var hosts []string
	for _, raw := range []string{m.RunServiceURL(), m.ResultsURL(), conn.DataValue("PipelinesServiceUrl"),
		conn.DataValue("CacheServerUrl"), conn.DataValue("GenerateIdTokenUrl")} {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" || seen[u.Hostname()] {
			continue
		}
		seen[u.Hostname()] = true
		hosts = append(hosts, strings.ToLower(u.Hostname()))
	}
	return hosts
}

// jobTokenFor is what the job's code gets as the job token: the
// surrogate the conversion made, else (a job from elsewhere) nothing.
func jobTokenFor(j *job.Job) string {
	for _, c := range j.ServiceCredentials {
		if c.Name == jobTokenCredential {
			return c.Surrogate
		}
	}
	return ""
}

// githubTokenCredential is the job's credential name for GITHUB_TOKEN.
const githubTokenCredential = "github-token"

// githubTokenSurrogate stands for GITHUB_TOKEN in the job: its "ghs_"
// style prefix (tools tell a token's kind by it) before random letters
// and digits, as long as the token, which GitHub accepts nowhere.
func githubTokenSurrogate(token string) string {
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	prefix := ""
	if i := strings.IndexByte(token, '_'); i > 0 && i <= 4 {
		prefix = token[:i+1]
	}
	n := max(len(token)-len(prefix), 36)
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return prefix + string(b)
}

// githubTokenHosts are the host names GITHUB_TOKEN is presented to: the
// server, its API and GraphQL hosts and, on github.com, the uploads and
// raw content hosts, the container registry, the package registries and
// GitHub Models (a workflow with models: read calls it with GITHUB_TOKEN);
// on GitHub Enterprise Server the server's subdomains (its packages).
func (m *AgentJobRequestMessage) githubTokenHosts() []string {
	gh := m.ContextData.Get("github")
	var hosts []string
	for _, key := range []string{"server_url", "api_url", "graphql_url"} {
		hosts = job.AddBindableHost(hosts, gh.StringAt(key))
	}
	server := job.AddBindableHost(nil, gh.StringAt("server_url"))
	switch {
	case len(server) == 0:
	case server[0] == "github.com":
		hosts = append(hosts, "uploads.github.com", "raw.githubusercontent.com", "ghcr.io", "*.pkg.github.com", "models.github.ai")
	default:
		hosts = append(hosts, "*."+server[0])
	}
	return hosts
}

// surrogateOf is what the job holds for value v: the surrogate of j's
// service credential of that value, else v.
func surrogateOf(j *job.Job, v string) string {
	if j != nil {
		for _, c := range j.ServiceCredentials {
			if c.Value == v {
				return c.Surrogate
			}
		}
	}
	return v
}

// jobSecrets is the secrets context the job's expressions see: a value
// it holds by surrogate (GITHUB_TOKEN) is the surrogate.
func (m *AgentJobRequestMessage) jobSecrets(j *job.Job) map[string]string {
	out := m.Secrets()
	for k, v := range out {
		out[k] = surrogateOf(j, v)
	}
	return out
}

// secretValues are the values a job's output, user or outputs must not
// hold: the secrets and the surrogates standing for them.
func (m *AgentJobRequestMessage) secretValues(j *job.Job) map[string]string {
	out := m.Secrets()
	if j != nil {
		for _, c := range j.ServiceCredentials {
			out["surrogate:"+c.Name] = c.Surrogate
		}
	}
	return out
}
