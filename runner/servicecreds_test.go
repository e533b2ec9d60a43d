package runner

import (
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/audit"
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
