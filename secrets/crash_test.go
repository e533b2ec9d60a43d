package secrets_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/secrets"
)

// Environment of the crash child (see TestMain).
const (
	envCrashChild = "AIRLOCK_SECRETS_CRASH_CHILD" // state dir
	envCrashJob   = "AIRLOCK_SECRETS_CRASH_JOB"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envCrashChild); dir != "" {
		os.Exit(crashChild(dir, os.Getenv(envCrashJob)))
	}
	os.Exit(m.Run())
}

// crashChild prepares a job's credentials, says READY and waits to be
// killed: a runner that dies while a job runs.
func crashChild(dir, jobID string) int {
	st, err := secrets.Open(dir, secrets.OpenOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	b, err := secrets.NewBroker(secrets.BrokerOptions{Store: st, Backends: backends()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	if _, err := b.Prepare(context.Background(), identity(jobID), requests("static", "vtok", "vdyn", "gh")); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	fmt.Println("READY")
	select {} // until SIGKILL
}

func TestRecoverAfterCrash(t *testing.T) {
	w := newWorld(t)
	if err := w.st.Close(); err != nil { // the child takes the lock
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashChild+"="+w.dir, envCrashJob+"=crashed-1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "READY" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child did not get ready: %q, %v; stderr: %s", line, err, stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child exit = %v, want killed", err)
	}

	if len(w.fv.LiveChildTokens()) != 1 || len(w.fv.LiveLeases()) != 1 || len(w.fg.LiveTokens()) != 1 {
		t.Fatalf("after the crash: %d vault tokens, %d leases, %d github tokens live; want 1 each",
			len(w.fv.LiveChildTokens()), len(w.fv.LiveLeases()), len(w.fg.LiveTokens()))
	}
	// The journal holds the GitHub token as its revocation handle: encrypted.
	raw, err := os.ReadFile(filepath.Join(w.dir, secrets.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range w.fg.Tokens() {
		if bytes.Contains(raw, []byte(tok.Value)) {
			t.Errorf("state.db contains the github token in plaintext")
		}
	}
	for _, tok := range w.fv.ChildTokens() {
		if bytes.Contains(raw, []byte(tok.ID)) {
			t.Errorf("state.db contains the vault token in plaintext")
		}
	}

	st := openStore(t, w.dir)
	rec := &recorder{}
	b, err := secrets.NewBroker(secrets.BrokerOptions{Store: st, Backends: backends(), Events: rec.sink, RevokeBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := b.Recover(context.Background())
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if len(jobs) != 1 || jobs[0].ID != "crashed-1" || jobs[0].State != secrets.JobRecovered {
		t.Errorf("Recover returned %+v, want job crashed-1 recovered", jobs)
	}
	w.noLive(t)
	ls, err := st.Leases("crashed-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.State != secrets.LeaseRevoked {
			t.Errorf("lease %s of %s is %s after Recover, want revoked", l.ID, l.Secret, l.State)
		}
	}
	if n := rec.count(secrets.EventRevoked); n != 4 {
		t.Errorf("%d revoked events, want 4", n)
	}
	if jobs, err := b.Recover(context.Background()); err != nil || len(jobs) != 0 {
		t.Errorf("second Recover = %+v, %v; want nothing to do", jobs, err)
	}
}
