package gitlab

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

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
	hosts = job.AddBindableHost(hosts, r.GitInfo.RepoURL)
	if v, ok := r.variable("KUBECONFIG"); ok && r.Token != "" && strings.Contains(v, r.Token) {
		hosts = kasHosts(hosts, v)
	}
	return hosts, plain
}

// kasHosts adds to GitLab's hosts those of kubeconfig's cluster servers
// that are GitLab's agent server (KAS). GitLab's KUBECONFIG for a job
// with agent access names KAS's Kubernetes proxy as the server and
// ci:<agent id>:<job token> as the token. A server counts as KAS when it
// is one of GitLab's hosts (KAS under /-/kubernetes-agent/) or kas. on
// a GitLab host or on its parent domain (kas.gitlab.com,
// kas.example.com beside gitlab.example.com): the job can write a
// KUBECONFIG of its own, and any other server would let it send the
// token wherever it likes.
func kasHosts(hosts []string, kubeconfig string) []string {
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `yaml:"server"`
			} `yaml:"cluster"`
		} `yaml:"clusters"`
	}
	if err := yaml.Unmarshal([]byte(kubeconfig), &kc); err != nil {
		return hosts
	}
	gitlab := slices.Clone(hosts)
	for _, c := range kc.Clusters {
		u, err := url.Parse(c.Cluster.Server)
		if err != nil || u.Scheme != "https" {
			continue
		}
		h := strings.ToLower(u.Hostname())
		for _, g := range gitlab {
			_, parent, _ := strings.Cut(g, ".")
			if h == "kas."+g || (strings.Contains(parent, ".") && h == "kas."+parent) {
				hosts = job.AddBindableHost(hosts, h)
			}
		}
	}
	return hosts
}
