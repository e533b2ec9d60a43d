package runner

import (
	"context"
	"os"
	"path/filepath"
	"testing"

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
