package runner

import (
	"strings"
	"testing"
	"time"
)

// claimingCoordinator resumes records of any "fake:" coordinator.
type claimingCoordinator struct{ *fakeCoordinator }

func (c claimingCoordinator) ResumesFor(name string) bool { return strings.HasPrefix(name, "fake:") }

// A record whose coordinator is no longer served (a JIT runner's) is
// reported by a coordinator that resumes for its name; one that does not
// leaves it in the journal.
func TestAgentOrphanRecordResumedByClaimingCoordinator(t *testing.T) {
	l := newFakeLease("fake-7")
	l.failOnce.Store(true)
	state := t.TempDir()
	stop := runFakeAgent(t, state, echoRunner{}, &fakeCoordinator{name: "fake:jit-1", queue: []*fakeLease{l}})
	deadline := time.Now().Add(time.Minute)
	for l.failOnce.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the lease was never reported")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()

	// A coordinator of another name that does not claim it: kept.
	other := &fakeCoordinator{name: "other:x"}
	stop = runFakeAgent(t, state, echoRunner{}, other)
	time.Sleep(200 * time.Millisecond)
	stop()
	if recs, err := openAndList(t, state); err != nil || len(recs) != 1 || len(other.resumed) != 0 {
		t.Fatalf("journal %d records (%v), %d resumed by a non-claiming coordinator; want the record kept", len(recs), err, len(other.resumed))
	}

	c := claimingCoordinator{&fakeCoordinator{name: "fake:jit-2"}}
	stop = runFakeAgent(t, state, echoRunner{}, c)
	deadline = time.Now().Add(time.Minute)
	for {
		c.mu.Lock()
		n := len(c.resumed)
		c.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphan record was never resumed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if o := waitFinished(t, c.resumed[0]); !o.Aborted {
		t.Errorf("orphan finished %+v, want a runner failure", o)
	}
	stop()
	if recs, err := openAndList(t, state); err != nil || len(recs) != 0 {
		t.Errorf("journal after the orphan's report: %d records, %v; want none", len(recs), err)
	}
}
