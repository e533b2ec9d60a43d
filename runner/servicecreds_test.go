package runner

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/job"
)

// A coordinator's service credential reaches the job only as its
// surrogate: the gateway puts the real value on requests to the bound
// host, never on another (allowed) host's, masks both in the log and
// records the use; an address among the hosts is left unbound.
func TestServiceCredentialBySurrogate(t *testing.T) {
	env := isoOpen(t, isoEgress...)
	const real, sur = "real-service-token-0123456789", "surrogate-service-token-abcdef"
	j := env.withCA(isoJob("svccred", isoEgress, []isoProbe{
		// The gateway answers a bound host itself (its CA: SSL_CERT_FILE).
		{name: "bound", cmd: `probe http https://api.allowed.test/bound --auth "Bearer ` + sur + `"`},
		{name: "unbound", cmd: `probe http https://` + isoWildName + `/unbound --auth "Bearer ` + sur + `"` + isoCAFlag},
		{cmd: "echo printing " + real + " and " + sur},
	}))
	j.ServiceCredentials = []job.ServiceCredential{{Name: "test-token", Surrogate: sur, Value: real, Hosts: []string{"api.allowed.test", "127.0.0.1"}}}
	run := env.run(t, j, nil)
	if run.res.State != Success {
		t.Fatalf("job %s (%v)\n%s", run.res.State, run.res.Err, run.out)
	}
	for _, p := range []string{"bound", "unbound"} {
		if got := run.probe(t, p); !strings.HasPrefix(got, "ok status=200") {
			t.Errorf("probe %s = %q, want ok status=200", p, got)
		}
	}
	seen := map[string]string{}
	for _, r := range env.fake.Requests() {
		for _, p := range []string{"/bound", "/unbound"} {
			if strings.HasSuffix(r.URL, p) {
				seen[p] = r.Header.Get("Authorization")
			}
		}
	}
	if seen["/bound"] != "Bearer "+real {
		t.Errorf("the bound host got Authorization %q, want the real value", seen["/bound"])
	}
	if strings.Contains(seen["/unbound"], real) {
		t.Errorf("a host the credential is not bound to got the real value")
	}
	if strings.Contains(run.out, real) || strings.Contains(run.out, sur) || !strings.Contains(run.out, "printing [MASKED] and [MASKED]") {
		t.Errorf("the value or its surrogate shows in the log:\n%s", run.out)
	}
	used := false
	for _, rec := range run.records {
		if rec.Type == audit.CredentialUsed && rec.String(audit.FieldHost) == "api.allowed.test" && rec.String(audit.FieldGrant) == "service:test-token" {
			used = true
		}
	}
	if !used {
		t.Errorf("no credential_used record for the bound host")
	}
}

// GitLab's job token, as its conversion binds it: the gateway swaps the
// surrogate in JOB-TOKEN, in ?job_token=, inside Basic credentials, in a
// form body and, for a GitLab on plain HTTP, on plain-HTTP requests; sent
// along to another host, its header is removed; a request to the
// bound host without the surrogate records no credential use.
func TestServiceCredentialInGitLabPlaces(t *testing.T) {
	env := isoOpen(t, isoEgress...)
	const real, sur = "glcbt-64_real-job-token-0123456789", "glcbt-airlock_surrogate-abcdef0123"
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:"+sur))
	j := env.withCA(isoJob("gltoken", isoEgress, []isoProbe{
		{name: "header", cmd: `probe http https://api.allowed.test/jt-header --header "JOB-TOKEN: ` + sur + `"`},
		{name: "query", cmd: `probe http "https://api.allowed.test/jt-query?job=a&job_token=` + sur + `"`},
		{name: "basic", cmd: `probe http https://api.allowed.test/jt-basic --auth "` + basic + `"`},
		// kubectl with GitLab's KUBECONFIG for agent access, to KAS.
		{name: "kas", cmd: `probe http https://api.allowed.test/jt-kas --auth "Bearer ci:7:` + sur + `"`},
		{name: "plain", cmd: `probe http http://api.allowed.test/jt-plain --header "JOB-TOKEN: ` + sur + `"`},
		{name: "none", cmd: `probe http https://api.allowed.test/jt-none`},
		{name: "form", cmd: `wget -q -O - --post-data "token=` + sur + `&ref=main" http://api.allowed.test/jt-form | grep -q fakenet && echo ok status=200`},
		{name: "elsewhere", cmd: `probe http https://api.allowed.test/jt-elsewhere --header "PRIVATE-TOKEN: ` + sur + `"`},
		{name: "unbound", cmd: `probe http http://` + isoWildName + `/jt-unbound --header "JOB-TOKEN: ` + sur + `"`},
	}))
	j.ServiceCredentials = []job.ServiceCredential{{Name: "gitlab-job-token", Surrogate: sur, Value: real, Hosts: []string{"api.allowed.test"},
		Headers: []string{"JOB-TOKEN"}, Query: []string{"job_token", "token"}, FormBody: true, PlainHTTP: true}}
	run := env.run(t, j, nil)
	if run.res.State != Success {
		t.Fatalf("job %s (%v)\n%s", run.res.State, run.res.Err, run.out)
	}
	for p, want := range map[string]string{"header": "ok status=200", "query": "ok status=200", "basic": "ok status=200", "kas": "ok status=200",
		"plain": "ok status=200", "none": "ok status=200", "form": "ok status=200", "elsewhere": "ok status=403", "unbound": "ok status=200"} {
		if got := run.probe(t, p); !strings.HasPrefix(got, want) {
			t.Errorf("probe %s = %q, want %s", p, got, want)
		}
	}
	got := map[string]testenv.FakeRequest{}
	for _, r := range env.fake.Requests() {
		if u, err := url.Parse(r.URL); err == nil {
			got[u.Path] = r
		}
	}
	if r := got["/jt-header"]; r.Header.Get("Job-Token") != real {
		t.Errorf("JOB-TOKEN reached the host as %q, want the real token", r.Header.Get("Job-Token"))
	}
	if r := got["/jt-query"]; !strings.HasSuffix(r.URL, "?job=a&job_token="+real) {
		t.Errorf("the query reached the host as %q, want job_token swapped", r.URL)
	}
	if r := got["/jt-basic"]; r.Header.Get("Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:"+real)) {
		t.Errorf("Basic credentials reached the host as %q, want the real token", r.Header.Get("Authorization"))
	}
	if r := got["/jt-kas"]; r.Header.Get("Authorization") != "Bearer ci:7:"+real {
		t.Errorf("the KAS token reached the host as %q, want the real token in it", r.Header.Get("Authorization"))
	}
	if r := got["/jt-plain"]; r.TLS || r.Header.Get("Job-Token") != real {
		t.Errorf("plain HTTP: tls %v, JOB-TOKEN %q, want the real token over plain HTTP", r.TLS, r.Header.Get("Job-Token"))
	}
	if r := got["/jt-form"]; r.Body != "token="+real+"&ref=main" {
		t.Errorf("the form body reached the host as %q, want token swapped", r.Body)
	}
	if _, ok := got["/jt-elsewhere"]; ok {
		t.Errorf("a request with the surrogate in another header reached the host")
	}
	// To another host (a redirect a client followed), without the header.
	if r, ok := got["/jt-unbound"]; !ok || r.Header.Get("Job-Token") != "" {
		t.Errorf("the request to an unbound host: reached %v, JOB-TOKEN %q; want it there without the header", ok, r.Header.Get("Job-Token"))
	}
	var used, empty int
	for _, rec := range run.records {
		if rec.Type == audit.CredentialUsed {
			switch rec.String(audit.FieldGrant) {
			case "service:gitlab-job-token":
				used++
			case "":
				empty++
			}
		}
	}
	if used == 0 || empty != 0 {
		t.Errorf("credential_used records: %d for the job token, %d without a grant; want some, none", used, empty)
	}
	if strings.Contains(run.out, real) {
		t.Errorf("the token shows in the log:\n%s", run.out)
	}
}
