package gitlab

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"strings"

	"github.com/airlock-ci/airlock/runner/job"
)

// jobTokenCredential is the job's credential name for GitLab's job token.
const jobTokenCredential = "gitlab-job-token"

// minJobTokenLen: a shorter token is no GitLab job token, and replacing
// it wherever it appears in the job's variables could change values
// that merely contain it.
const minJobTokenLen = 16

// jobTokenHostVariables hold the URLs (or host[:port]) of the GitLab
// services a job's code presents its job token to: the API, Git over
// HTTP, the container registry (its token endpoint is the API's host)
// and the dependency proxy.
var jobTokenHostVariables = []string{"CI_SERVER_URL", "CI_API_V4_URL", "CI_API_GRAPHQL_URL", "CI_SERVER_HOST",
	"CI_SERVER_FQDN", "CI_REPOSITORY_URL", "CI_REGISTRY", "CI_DEPENDENCY_PROXY_SERVER"}

// convertJobToken gives the job a surrogate of its job token: every
// value of the job's and its services' variables that holds the token
// (CI_JOB_TOKEN, CI_REGISTRY_PASSWORD, CI_DEPENDENCY_PROXY_PASSWORD, the
// token in CI_REPOSITORY_URL, a variable expanded from it) holds the
// surrogate instead, and the gateway swaps the token back in on requests
// to the GitLab instance's hosts, where GitLab takes it: Authorization
// (Basic gitlab-ci-token:<token>, Bearer), JOB-TOKEN, ?job_token= and
// the pipeline trigger's token= (query or form body).
// The runner keeps the token for its own calls (sources, artifacts,
// cache, the trace). Call it once the variables and services are
// converted.
func (r *JobResponse) convertJobToken(j *job.Job) {
	token := r.Token
	hosts, plain := r.jobTokenHosts()
	if len(token) < minJobTokenLen || len(hosts) == 0 {
		// No name to bind (a GitLab addressed by IP): a surrogate would
		// be worthless there, so the job holds the token, as with
		// gitlab-runner.
		return
	}
	sur := jobTokenSurrogate(token)
	for i := range j.Variables {
		j.Variables[i].Value = strings.ReplaceAll(j.Variables[i].Value, token, sur)
	}
	for i := range j.Services {
		for k := range j.Services[i].Variables {
			v := &j.Services[i].Variables[k]
			v.Value = strings.ReplaceAll(v.Value, token, sur)
		}
	}
	j.ServiceCredentials = append(j.ServiceCredentials, job.ServiceCredential{
		Name: jobTokenCredential, Surrogate: sur, Value: token, Hosts: hosts,
		Headers: []string{"JOB-TOKEN"}, Query: []string{"job_token", "token"}, FormBody: true, PlainHTTP: plain,
	})
}

// jobTokenSurrogate keeps a token's "glcbt-" prefix (tools tell a job
// token by it) before random hex, which GitLab accepts nowhere.
func jobTokenSurrogate(token string) string {
	b := make([]byte, 24)
	rand.Read(b)
	prefix := "airlock-surrogate-"
	if strings.HasPrefix(token, "glcbt-") {
		prefix = "glcbt-airlock_"
	}
	return prefix + hex.EncodeToString(b)
}

// jobTokenHosts are the host names (not addresses) of the GitLab
// instance's services, from its variables and the job's repository URL,
// and whether GitLab itself (CI_SERVER_URL) is served over plain HTTP.
func (r *JobResponse) jobTokenHosts() (hosts []string, plain bool) {
	for _, name := range jobTokenHostVariables {
		v, _ := r.variable(name)
		hosts = job.AddBindableHost(hosts, v)
		if name == "CI_SERVER_URL" {
			if u, err := url.Parse(v); err == nil && u.Scheme == "http" {
				plain = true
			}
		}
	}
	return job.AddBindableHost(hosts, r.GitInfo.RepoURL), plain
}
