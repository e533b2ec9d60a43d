package runner

import (
	"net/netip"
	"testing"

	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
)

// TestCeilingCIDRWorksInEnforcingMode: a CIDR entry in the admin's ceiling
// lets the repository's jobs reach that range on that port in enforcing
// mode (it used to count only in audit mode), while jobs still cannot
// declare CIDR entries themselves.
func TestCeilingCIDRWorksInEnforcingMode(t *testing.T) {
	ceiling, err := netpolicy.ParseEntries([]string{"db.internal:5432", "10.1.2.0/24:5432"})
	if err != nil {
		t.Fatal(err)
	}
	n := &Network{Ceiling: func(string, string) (Ceiling, error) { return Ceiling{Entries: ceiling, Scope: "test"}, nil }}
	p, err := n.policy(&job.Job{Repo: "group/app", Egress: []string{"db.internal:5432"}})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Allows("db.internal", 5432) {
		t.Errorf("declared db.internal:5432 not allowed")
	}
	if !p.AllowsAddr(netip.MustParseAddr("10.1.2.3"), 5432) {
		t.Errorf("the ceiling's 10.1.2.0/24:5432 does not allow 10.1.2.3:5432 in enforcing mode")
	}
	if p.AllowsAddr(netip.MustParseAddr("10.1.2.3"), 443) || p.AllowsAddr(netip.MustParseAddr("10.1.3.3"), 5432) {
		t.Errorf("the ceiling's CIDR entry allows more than its range and port")
	}
	if _, err := n.policy(&job.Job{Repo: "group/app", Egress: []string{"10.1.2.0/24:5432"}}); err == nil {
		t.Errorf("a job declaring a CIDR entry was accepted")
	}
}

// The ceiling is looked up for the job's repository on its coordinator
// instance: the same path on another instance is another project.
func TestCeilingIsLookedUpWithTheInstance(t *testing.T) {
	var gotRepo, gotInstance string
	n := &Network{Ceiling: func(repo, instance string) (Ceiling, error) {
		gotRepo, gotInstance = repo, instance
		return Ceiling{Scope: "test"}, nil
	}}
	if _, err := n.policy(&job.Job{Repo: "group/app", Instance: "https://gitlab.a.test"}); err != nil {
		t.Fatal(err)
	}
	if gotRepo != "group/app" || gotInstance != "https://gitlab.a.test" {
		t.Errorf("Ceiling(%q, %q), want group/app on https://gitlab.a.test", gotRepo, gotInstance)
	}
}
