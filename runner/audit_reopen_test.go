package runner

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/secrets"
)

// Recovery records a crashed job's revocations in its reopened trail; a
// trail that cannot be opened is an error (the event is not recorded),
// not silently nothing.
func TestReopenCrashedReportsOpenErrors(t *testing.T) {
	dir := t.TempDir()
	key, err := audit.LoadOrCreateKey(filepath.Join(dir, "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	spool := filepath.Join(dir, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	a := NewAuditor(AuditorConfig{SpoolDir: spool, Dir: filepath.Join(dir, "audit"), Key: key, RunnerID: "r1"})
	ev := secrets.Event{Type: secrets.EventRevoked, JobID: "crashed", Secret: "tok"}

	// No trail at all: nothing to record.
	if err := a.brokerEvent(context.Background(), ev); err != nil {
		t.Errorf("brokerEvent without a trail = %v, want nil", err)
	}
	// A damaged spool file: the error surfaces.
	if err := os.WriteFile(audit.SpoolPath(spool, "crashed"), []byte("{not a record\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.brokerEvent(context.Background(), ev); err == nil {
		t.Error("brokerEvent on a damaged trail = nil, want the open error")
	}
}

// A trail of the runner's own work (an autoscaler's, a peer revocation's)
// that a crash left open is sealed by recovery like a job's, but it is
// reported as no job; a job's trail beside it is.
func TestRecoverOwnTrailIsNoJob(t *testing.T) {
	dir := t.TempDir()
	key, err := audit.LoadOrCreateKey(filepath.Join(dir, "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	spool, delivered := filepath.Join(dir, "spool"), filepath.Join(dir, "audit")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sh := audit.NewShipper(spool, []audit.Sink{audit.NewDirSink(delivered)}, audit.ShipperOptions{Interval: 5 * time.Millisecond})
	done := make(chan struct{})
	go func() { defer close(done); _ = sh.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	a := NewAuditor(AuditorConfig{SpoolDir: spool, Dir: delivered, Key: key, RunnerID: "r1", Kick: sh.Kick})
	if _, err := a.OpenOwn("r1", "backup", "x"); err == nil {
		t.Errorf("OpenOwn of an unknown kind succeeded")
	}
	own, err := a.OpenOwn("r1", OwnTrailAutoscale, "linux")
	if err != nil {
		t.Fatal(err)
	}
	job, err := audit.Open(spool, "r1", "job-7", key)
	if err != nil {
		t.Fatal(err)
	}
	// Closed unsealed: what a crash leaves.
	for _, tr := range []*audit.Trail{own, job} {
		if _, err := tr.Log(ctx, audit.NewRunnerCrashed("test event", 0)); err != nil {
			t.Fatal(err)
		}
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(Config{RunnerID: "r1", RuntimeDir: t.TempDir()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Audit = a
	recovered, err := r.Recover(ctx)
	if err != nil {
		t.Fatalf("Recover() error = %v", err)
	}
	if len(recovered) != 1 || recovered[0].JobID != "job-7" {
		t.Errorf("recovered = %+v, want job-7 alone", recovered)
	}
	for _, id := range []string{own.Job(), "job-7"} {
		if !sealedFile(a.deliveredPath(id)) {
			t.Errorf("trail %s is not delivered sealed after recovery", id)
		}
	}
}
