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
