package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// nftJob is what the host's shared table holds of one job: the rules of
// its chain (-1 when the chain does not exist) and whether its veth is in
// the verdict map (sent to that chain) and in the forward drop set.
type nftJob struct {
	rules        int
	mapped, veth bool
}

func nftJobState(t *testing.T, spec FirewallSpec) nftJob {
	t.Helper()
	return nftJobStateIn(t, HostTable, spec)
}

func nftJobStateIn(t *testing.T, table string, spec FirewallSpec) nftJob {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: table}
	name := ChainName(spec.RunnerID, spec.JobID)
	st := nftJob{rules: -1}
	if _, err := c.ListTableOfFamily(table, nftables.TableFamilyINet); err != nil {
		return st
	}
	if _, err := c.ListChain(tb, name); err == nil {
		rules, err := c.GetRules(tb, &nftables.Chain{Name: name, Table: tb})
		if err != nil {
			t.Fatalf("listing rules of %s: %v", name, err)
		}
		st.rules = len(rules)
	}
	jobs, err := c.GetSetElements(&nftables.Set{Table: tb, Name: jobsMap})
	if err != nil {
		t.Fatalf("listing map %s: %v", jobsMap, err)
	}
	for _, e := range jobs {
		if ifName(e.Key) == spec.HostIf {
			if got := jumpTarget(e.Val); got != name {
				t.Errorf("map %s sends %s to %q, want %q", jobsMap, spec.HostIf, got, name)
			}
			st.mapped = true
		}
	}
	veths, err := c.GetSetElements(&nftables.Set{Table: tb, Name: vethsSet})
	if err != nil {
		t.Fatalf("listing set %s: %v", vethsSet, err)
	}
	for _, e := range veths {
		st.veth = st.veth || ifName(e.Key) == spec.HostIf
	}
	return st
}

var nftGone = nftJob{rules: -1}

func TestNFTablesApplyRemoveOnHost(t *testing.T) {
	testenv.RequireRoot(t)
	for _, deferred := range []bool{false, true} {
		t.Run(fmt.Sprintf("deferred=%t", deferred), func(t *testing.T) {
			fw, err := NewNFTables(hclog.NewNullLogger(), NFTablesOptions{DeferRemove: deferred})
			if err != nil {
				t.Fatalf("NewNFTables() error = %v", err)
			}
			runner := fmt.Sprintf("nfttest-%d-%d", os.Getpid(), time.Now().UnixNano())
			spec := testSpec(runner, "job-1")
			name := ChainName(runner, "job-1")
			ctx := context.Background()
			t.Cleanup(func() {
				_ = fw.Remove(ctx, spec)
				if err := fw.Close(); err != nil {
					t.Errorf("Close() error = %v", err)
				}
				if st := nftJobState(t, spec); st != nftGone {
					t.Errorf("job %s left after Close: %+v", name, st)
				}
			})
			if err := fw.Apply(ctx, spec); err != nil {
				t.Fatalf("Apply() error = %v", err)
			}
			if err := fw.Verify(ctx, spec); err != nil {
				t.Errorf("Verify() after Apply error = %v", err)
			}
			// 4 TCP ports (2 + 2 transparent) + 1 UDP + established + drop;
			// the veth sent to the chain and dropped in forward.
			first := nftJobState(t, spec)
			if want := (nftJob{rules: 7, mapped: true, veth: true}); first != want {
				t.Errorf("after Apply job %s is %+v, want %+v", name, first, want)
			}
			if err := fw.Apply(ctx, spec); err != nil {
				t.Fatalf("second Apply() error = %v", err)
			}
			if st := nftJobState(t, spec); st != first {
				t.Errorf("after second Apply job %s is %+v, want %+v (no duplicates)", name, st, first)
			}
			for i := range 2 {
				if err := fw.Remove(ctx, spec); err != nil {
					t.Fatalf("Remove() #%d error = %v", i+1, err)
				}
			}
			if deferred {
				// Applying a job whose table is queued for removal keeps it.
				if err := fw.Apply(ctx, spec); err != nil {
					t.Fatalf("Apply() after a deferred Remove error = %v", err)
				}
				if err := fw.removePending(); err != nil {
					t.Fatal(err)
				}
				if st := nftJobState(t, spec); st != first {
					t.Errorf("re-applied job is %+v after the queued removals ran, want %+v", st, first)
				}
				if err := fw.Remove(ctx, spec); err != nil {
					t.Fatal(err)
				}
				if err := fw.removePending(); err != nil {
					t.Fatal(err)
				}
			}
			if st := nftJobState(t, spec); st != nftGone {
				t.Errorf("job %s after Remove: %+v, want nothing left", name, st)
			}
			if err := fw.Verify(ctx, spec); err == nil {
				t.Errorf("Verify() after Remove succeeded, want an error")
			}
			hostNS := spec
			hostNS.NetNS = testenv.HostNetNS()
			if err := fw.Apply(ctx, FirewallSpec{RunnerID: runner, JobID: "j", HostIf: "bad name"}); err == nil {
				t.Errorf("Apply() with an invalid spec succeeded, want an error")
			}
			bad := spec
			bad.NetNS = "/nonexistent/netns"
			if err := fw.Apply(ctx, bad); err == nil || !strings.Contains(err.Error(), "namespace") {
				t.Errorf("Apply() into a missing namespace error = %v, want one naming the namespace", err)
			}
			if st := nftJobState(t, bad); st != nftGone {
				t.Errorf("a failed Apply left job %s: %+v", name, st)
			}
		})
	}
}

func TestNFTablesSweepTouchesOnlyItsRunner(t *testing.T) {
	testenv.RequireRoot(t)
	fw, err := NewNFTables(hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("NewNFTables() error = %v", err)
	}
	defer fw.Close()
	ctx := context.Background()
	mine := fmt.Sprintf("nftsweep-a-%d", time.Now().UnixNano())
	other := fmt.Sprintf("nftsweep-b-%d", time.Now().UnixNano())
	specs := []FirewallSpec{testSpec(mine, "keep"), testSpec(mine, "dead"), testSpec(other, "dead")}
	for _, s := range specs {
		if err := fw.Apply(ctx, s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = fw.Remove(ctx, s) })
	}
	// A table per job is what earlier versions made: a crash left them.
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	oldMine := &nftables.Table{Family: nftables.TableFamilyINet, Name: ChainName(mine, "old-dead")}
	oldOther := &nftables.Table{Family: nftables.TableFamilyINet, Name: ChainName(other, "old-dead")}
	c.AddTable(oldMine)
	c.AddTable(oldOther)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.AddTable(oldOther)
		c.DelTable(oldOther)
		_ = c.Flush()
	})
	keep := JobTag("keep")
	if err := fw.Sweep(ctx, mine, func(jt string) bool { return jt == keep }); err != nil {
		t.Fatalf("Sweep() error = %v", err)
	}
	for _, tc := range []struct {
		table *nftables.Table
		want  bool
	}{{oldMine, false}, {oldOther, true}} {
		_, err := c.ListTableOfFamily(tc.table.Name, nftables.TableFamilyINet)
		if got := err == nil; got != tc.want {
			t.Errorf("after Sweep the old per-job table %s exists = %t, want %t", tc.table.Name, got, tc.want)
		}
	}
	for _, tc := range []struct {
		spec FirewallSpec
		want bool
	}{{specs[0], true}, {specs[1], false}, {specs[2], true}} {
		name := ChainName(tc.spec.RunnerID, tc.spec.JobID)
		st := nftJobState(t, tc.spec)
		if got := st.rules >= 0; got != tc.want || st.mapped != tc.want || st.veth != tc.want {
			t.Errorf("after Sweep job %s (runner %s job %s) is %+v, want present = %t", name, tc.spec.RunnerID, tc.spec.JobID, st, tc.want)
		}
	}
}

// Two processes share the host table; one making it again must not
// double its base rules, and a table an admin deleted ("nft flush
// ruleset") is made again by the next job instead of failing it.
func TestNFTablesSharedTableIsRepaired(t *testing.T) {
	testenv.RequireRoot(t)
	table := fmt.Sprintf("airlock-test-%d", os.Getpid())
	ctx := context.Background()
	open := func() *NFTables {
		fw, err := NewNFTables(hclog.NewNullLogger(), NFTablesOptions{Table: table})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fw.Close() })
		return fw
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: table}
	drop := func() {
		c.AddTable(tb)
		c.DelTable(tb)
		if err := c.Flush(); err != nil {
			t.Fatalf("deleting table %s: %v", table, err)
		}
	}
	t.Cleanup(drop)
	runner := fmt.Sprintf("nftshared-%d", time.Now().UnixNano())
	a, b := open(), open()
	j1, j2, j3 := testSpec(runner, "j1"), testSpec(runner, "j2"), testSpec(runner, "j3")
	if err := a.Apply(ctx, j1); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, j2); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []string{"input", "forward"} {
		rules, err := c.GetRules(tb, &nftables.Chain{Name: ch, Table: tb})
		if err != nil || len(rules) != 1 {
			t.Errorf("base chain %s has %d rules (%v), want 1 after two processes made the table", ch, len(rules), err)
		}
	}
	for _, j := range []FirewallSpec{j1, j2} {
		if st := nftJobStateIn(t, table, j); st != (nftJob{rules: 7, mapped: true, veth: true}) {
			t.Errorf("job %s: %+v", j.JobID, st)
		}
	}
	drop()
	if err := a.Apply(ctx, j3); err != nil {
		t.Fatalf("Apply() after the table was deleted: %v", err)
	}
	if err := a.Verify(ctx, j3); err != nil {
		t.Errorf("Verify() of the job applied into the remade table: %v", err)
	}
	if err := a.Verify(ctx, j1); err == nil {
		t.Errorf("Verify() of a job whose rules were deleted with the table succeeded")
	}
	if err := a.Remove(ctx, j3); err != nil {
		t.Fatal(err)
	}
	if st := nftJobStateIn(t, table, j3); st != nftGone {
		t.Errorf("after Remove job j3 is %+v", st)
	}
}

type fakeProbe struct {
	backend, policy string
	err             error
}

func (p fakeProbe) IPTablesBackend() (string, error) { return p.backend, p.err }
func (p fakeProbe) InputPolicy() (string, error)     { return p.policy, nil }

func TestChooseFirewall(t *testing.T) {
	tests := []struct {
		mode    string
		probe   fakeProbe
		want    string
		wantErr bool
	}{
		{"", fakeProbe{backend: "nf_tables", policy: "ACCEPT"}, FirewallNFTables, false},
		{"auto", fakeProbe{backend: "nf_tables", policy: "DROP"}, FirewallIPTables, false},
		{"auto", fakeProbe{backend: "legacy", policy: "ACCEPT"}, FirewallIPTables, false},
		{"auto", fakeProbe{err: errors.New("no iptables")}, FirewallIPTables, false},
		{"iptables", fakeProbe{backend: "nf_tables", policy: "ACCEPT"}, FirewallIPTables, false},
		{"nftables", fakeProbe{backend: "legacy", policy: "DROP"}, FirewallNFTables, false},
		{"pf", fakeProbe{}, "", true},
	}
	for _, tc := range tests {
		got, why, err := ChooseFirewall(tc.mode, tc.probe)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ChooseFirewall(%q, %+v) = %q (%s), %v; want %q, error %t", tc.mode, tc.probe, got, why, err, tc.want, tc.wantErr)
		}
	}
}
