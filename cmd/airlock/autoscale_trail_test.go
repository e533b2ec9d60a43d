package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/github/autoscale"
)

// The decision trail opens on the first decision, records each one, is
// sealed by stop, verifies, and takes nothing (and does not panic) after.
func TestDecisionTrail(t *testing.T) {
	dir := t.TempDir()
	key, err := audit.LoadOrCreateKey(filepath.Join(dir, "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	spool := filepath.Join(dir, "spool")
	au := runner.NewAuditor(runner.AuditorConfig{SpoolDir: spool, Dir: filepath.Join(dir, "out"), Key: key, RunnerID: "r1", Logger: hclog.NewNullLogger()})
	d := newDecisionTrail(au, "r1", "acme", hclog.NewNullLogger())
	d.observe(autoscale.Event{Type: autoscale.EventJobQueued, Repo: "acme/app", Job: 42})
	d.observe(autoscale.Event{Type: autoscale.EventRunnerCreated, Repo: "acme/app", Job: 42, Runner: "airlock-h-1"})
	d.observe(autoscale.Event{Type: autoscale.EventDeliveryRefused, Delivery: "d-1", Reason: "bad signature"})
	d.stop()
	d.stop() // twice is harmless
	d.observe(autoscale.Event{Type: autoscale.EventJobQueued, Job: 43})

	files, _ := filepath.Glob(filepath.Join(spool, "autoscale-acme-*"))
	if len(files) != 1 {
		t.Fatalf("trails in the spool: %v, want one", files)
	}
	f, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := audit.Verify(f, key.Public())
	if err != nil {
		t.Fatalf("Verify = %v", err)
	}
	if rep.SealReason != "agent stopped" || rep.Records != 3 {
		t.Errorf("trail: %d records, sealed %q; want 3, sealed \"agent stopped\"", rep.Records, rep.SealReason)
	}
	b, _ := os.ReadFile(files[0])
	for _, want := range []string{`"type":"autoscale_job_queued"`, `"github_job":42`, `"jit_runner":"airlock-h-1"`,
		`"type":"autoscale_delivery_refused"`, `"webhook_delivery":"d-1"`, `"reason":"bad signature"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("trail lacks %s:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), `"github_job":43`) {
		t.Errorf("a decision after stop was recorded")
	}
}
