package fleet

import (
	"context"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/airlock-ci/airlock/secrets"
)

func snapshotAt(rev int64) *Store {
	s := &Store{cfg: Config{Prefix: "/airlock/"}, rev: rev, data: map[string]map[string][]byte{}}
	for kind := range snapshotted {
		s.data[kind] = map[string][]byte{}
	}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func put(key, value string, rev int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), ModRevision: rev}}
}

// A progress notification ahead of the events (what etcd before 3.4.24 /
// 3.5.8 sends on request, etcd#15220) must not count as applied: it let
// Sync return before the secret another host had set arrived (CI saw "no
// secret named" with one member down), and a watch resumed from it would
// skip the events in between.
func TestProgressAheadOfEventsIsNotApplied(t *testing.T) {
	s := snapshotAt(10)
	before := time.Now()
	s.apply(clientv3.WatchResponse{Header: pb.ResponseHeader{Revision: 20}})
	if got := s.Revision(); got != 10 {
		t.Fatalf("Revision() after a progress notification for 20 = %d, want 10 (no event applied)", got)
	}
	if s.contact.Before(before) {
		t.Error("a progress notification did not count as contact")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.WaitRevision(ctx, 12); err == nil {
		t.Error("WaitRevision(12) returned with events 11 and 12 not applied")
	}

	key := "/airlock/" + secrets.KindSecrets + "/s"
	s.apply(clientv3.WatchResponse{Header: pb.ResponseHeader{Revision: 20},
		Events: []*clientv3.Event{put(key, "one", 11), put("/airlock/hosts/a", "x", 12)}})
	if got := s.Revision(); got != 12 {
		t.Errorf("Revision() after events 11 and 12 = %d, want 12", got)
	}
	if v, ok := s.Get(secrets.KindSecrets, "s"); !ok || string(v) != "one" {
		t.Errorf("Get(secrets, s) = %q, %v; want one", v, ok)
	}
}

// After a fresh read at a revision, the watch's older events for the same
// keys are not applied over it.
func TestEventsOlderThanTheSnapshotAreSkipped(t *testing.T) {
	s := snapshotAt(30)
	s.data[secrets.KindGrants]["g"] = []byte("new")
	key := "/airlock/" + secrets.KindGrants + "/g"
	s.apply(clientv3.WatchResponse{Events: []*clientv3.Event{put(key, "old", 25),
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: 28}}}})
	if v, ok := s.Get(secrets.KindGrants, "g"); !ok || string(v) != "new" {
		t.Errorf("Get(grants, g) = %q, %v after events 25 and 28 replayed; want new", v, ok)
	}
	s.apply(clientv3.WatchResponse{Events: []*clientv3.Event{put(key, "newer", 31)}})
	if v, _ := s.Get(secrets.KindGrants, "g"); string(v) != "newer" || s.Revision() != 31 {
		t.Errorf("after event 31: value %q, revision %d; want newer, 31", v, s.Revision())
	}
}
