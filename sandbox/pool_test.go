package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Concurrent updates in one process are committed in batches; each keeps
// its own outcome: distinct prefixes for distinct interfaces, exactly one
// winner per duplicated interface (the losers' errors name it and leave
// nothing behind), and a file that says exactly that.
func TestPoolGroupCommitKeepsEachOutcome(t *testing.T) {
	p, err := newPool(netip.MustParsePrefix("10.250.0.0/24"), filepath.Join(t.TempDir(), "netpool.json"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 48
	type result struct {
		prefix netip.Prefix
		err    error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			// Every third interface name is claimed twice.
			name := fmt.Sprintf("if%d", i)
			if i%3 == 1 {
				name = fmt.Sprintf("if%d", i-1)
			}
			pr, err := p.allocate(allocation{HostIf: name, JobID: fmt.Sprint(i), PID: os.Getpid()}, nil)
			results[i] = result{pr, err}
		})
	}
	close(start)
	wg.Wait()
	seen := map[netip.Prefix]int{}
	winners := map[string]int{}
	for i, r := range results {
		name := fmt.Sprintf("if%d", i)
		if i%3 == 1 {
			name = fmt.Sprintf("if%d", i-1)
		}
		if r.err != nil {
			if !strings.Contains(r.err.Error(), "interface "+name+" is already allocated") {
				t.Errorf("allocation %d: %v, want a duplicate-interface error naming %s", i, r.err, name)
			}
			continue
		}
		winners[name]++
		if j, dup := seen[r.prefix]; dup {
			t.Errorf("allocations %d and %d both got %s", j, i, r.prefix)
		}
		seen[r.prefix] = i
	}
	for name, w := range winners {
		if w != 1 {
			t.Errorf("interface %s allocated %d times", name, w)
		}
	}
	if want := n - n/3; len(winners) != want {
		t.Errorf("%d interfaces allocated, want %d", len(winners), want)
	}
	got, err := p.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(winners) {
		t.Errorf("pool file holds %d allocations, want %d", len(got), len(winners))
	}
	for _, a := range got {
		if results[atoi(t, a.JobID)].prefix != a.Prefix {
			t.Errorf("file says %s for job %s, its caller got %s", a.Prefix, a.JobID, results[atoi(t, a.JobID)].prefix)
		}
	}
}

// A failing update in a batch leaves the state as it found it — its
// partial changes are not written — and does not fail the others.
func TestPoolFailedUpdateRollsBack(t *testing.T) {
	p, err := newPool(netip.MustParsePrefix("10.250.0.0/24"), filepath.Join(t.TempDir(), "netpool.json"))
	if err != nil {
		t.Fatal(err)
	}
	add := func(name string) *poolUpdate {
		return &poolUpdate{done: make(chan struct{}), lead: make(chan struct{}), fn: func(st *poolState) (bool, error) {
			st.Allocations = append(st.Allocations, allocation{HostIf: name})
			return true, nil
		}}
	}
	boom := errors.New("boom")
	bad := &poolUpdate{done: make(chan struct{}), lead: make(chan struct{}), fn: func(st *poolState) (bool, error) {
		st.Allocations = append(st.Allocations, allocation{HostIf: "half-done"})
		st.Allocations[0].HostIf = "mangled"
		return true, boom
	}}
	batch := []*poolUpdate{add("first"), bad, add("second")}
	p.commit(batch)
	if batch[0].err != nil || batch[2].err != nil || !errors.Is(bad.err, boom) {
		t.Fatalf("outcomes %v, %v, %v; want nil, boom, nil", batch[0].err, bad.err, batch[2].err)
	}
	got, err := p.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range got {
		names = append(names, a.HostIf)
	}
	if strings.Join(names, ",") != "first,second" {
		t.Errorf("after a batch with a failed update the pool holds %v, want first,second", names)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var i int
	if _, err := fmt.Sscan(s, &i); err != nil {
		t.Fatal(err)
	}
	return i
}

// The /30s the host has addresses in are passed over; once they are all
// that is left, the pool is exhausted and says how many the host holds
// (its own allocations, whose veths have addresses too, not counted).
func TestPoolPassesOverTakenSlots(t *testing.T) {
	p, err := newPool(netip.MustParsePrefix("10.250.1.0/28"), filepath.Join(t.TempDir(), "netpool.json")) // 4 slots
	if err != nil {
		t.Fatal(err)
	}
	s := func(i int) netip.Prefix { return p.slot(i) }
	taken := map[netip.Prefix]bool{s(0): true, s(2): true}
	var got []netip.Prefix
	for i := range 2 {
		pr, err := p.allocate(allocation{HostIf: fmt.Sprint("if", i), PID: os.Getpid()}, taken)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pr)
		taken[pr] = true // its veth's address, as the host shows it
	}
	if got[0] != s(1) || got[1] != s(3) {
		t.Errorf("allocated %v, want %v and %v", got, s(1), s(3))
	}
	_, err = p.allocate(allocation{HostIf: "if9", PID: os.Getpid()}, taken)
	if err == nil || !strings.Contains(err.Error(), "exhausted (2 allocations, 2 more /30s hold addresses of the host's interfaces)") {
		t.Errorf("allocate with every slot taken: %v", err)
	}
}
