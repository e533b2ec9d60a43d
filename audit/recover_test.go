package audit

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
)

func verifyFile(t *testing.T, path string, key *Key) Report {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := Verify(f, key.Public())
	if err != nil {
		t.Fatalf("Verify(%s) = %v", path, err)
	}
	return rep
}

func lastRecords(t *testing.T, path string) []Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := ReadRecords(f)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestRecoverSealsCrashedTrails(t *testing.T) {
	ctx := context.Background()
	const torn = `{"seq":4,"time":"2026-11-29T1`
	tests := []struct {
		name          string
		tear          bool
		wantTruncated int64
	}{
		{"closed without seal", false, 0},
		{"torn last line", true, int64(len(torn))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := testKey(t)
			dir := t.TempDir()
			tr, err := Open(dir, "r1", "job", key)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"a", "b", "c"} {
				if _, err := tr.Log(ctx, NewStepStarted(s)); err != nil {
					t.Fatal(err)
				}
			}
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.tear {
				f, err := os.OpenFile(SpoolPath(dir, "job"), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteString(torn)
				f.Close()
			}
			// A live trail of another job and a trail of another runner are left alone.
			live, err := Open(dir, "r1", "live", key)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { live.Close() })
			other, err := Open(dir, "r2", "other", key)
			if err != nil {
				t.Fatal(err)
			}
			other.Log(ctx, NewStepStarted("x"))
			other.Close()

			res, err := Recover(ctx, dir, "r1", key)
			if err != nil {
				t.Fatalf("Recover = %v", err)
			}
			if !slices.Equal(res.Sealed, []string{"job"}) {
				t.Errorf("Recover sealed %v, want [job]", res.Sealed)
			}
			slices.Sort(res.Skipped)
			if !slices.Equal(res.Skipped, []string{"live", "other"}) {
				t.Errorf("Recover skipped %v, want [live other]", res.Skipped)
			}
			rep := verifyFile(t, SpoolPath(dir, "job"), key)
			if rep.Records != 4 || rep.SealReason != string(RunnerCrashed) || rep.TruncatedBytes != tc.wantTruncated {
				t.Errorf("Verify = %d records, reason %q, truncated %d; want 4, runner_crashed, %d",
					rep.Records, rep.SealReason, rep.TruncatedBytes, tc.wantTruncated)
			}
			recs := lastRecords(t, SpoolPath(dir, "job"))
			if got := recs[3]; got.Type != RunnerCrashed || got.Int(FieldTruncatedBytes) != tc.wantTruncated {
				t.Errorf("record 4 = %s truncated %d, want runner_crashed truncated %d", got.Type, got.Int(FieldTruncatedBytes), tc.wantTruncated)
			}
			// A second Recover finds nothing to do.
			res, err = Recover(ctx, dir, "r1", key)
			if err != nil || len(res.Sealed) != 0 {
				t.Errorf("second Recover = %v, %v; want nothing sealed", res.Sealed, err)
			}
		})
	}
}

const childEnv = "AIRLOCK_AUDIT_TEST_CHILD"

// TestSIGKILLChild is the child process of TestSIGKILLRecover: it appends
// records, says "ready" and blocks until it is killed.
func TestSIGKILLChild(t *testing.T) {
	dir := os.Getenv(childEnv)
	if dir == "" {
		return // only meaningful as the child of TestSIGKILLRecover
	}
	key, err := LoadKey(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Open(filepath.Join(dir, "spool"), "r1", "killed", key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tr.Log(ctx, NewJobAccepted("local", "", "acme/app", "main", "", false, "", "img"))
	for _, s := range []string{"build", "test", "deploy", "report"} {
		if _, err := tr.Log(ctx, NewStepStarted(s)); err != nil {
			t.Fatal(err)
		}
	}
	os.Stdout.WriteString("ready\n")
	select {}
}

func TestSIGKILLRecover(t *testing.T) {
	dir := t.TempDir()
	key, err := LoadOrCreateKey(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSIGKILLChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("child said %q, %v; want ready", line, err)
	}
	spool := filepath.Join(dir, "spool")
	ctx := context.Background()
	// While the child lives, its trail is locked and Recover leaves it alone.
	res, err := Recover(ctx, spool, "r1", key)
	if err != nil || len(res.Sealed) != 0 || !slices.Equal(res.Skipped, []string{"killed"}) {
		t.Fatalf("Recover with live child = %+v, %v; want killed skipped", res, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	res, err = Recover(ctx, spool, "r1", key)
	if err != nil || !slices.Equal(res.Sealed, []string{"killed"}) {
		t.Fatalf("Recover after SIGKILL = %+v, %v; want killed sealed", res, err)
	}
	rep := verifyFile(t, SpoolPath(spool, "killed"), key)
	if rep.Records != 6 || rep.SealReason != string(RunnerCrashed) {
		t.Errorf("Verify = %d records, reason %q; want 6, runner_crashed", rep.Records, rep.SealReason)
	}
}

// Recover removes the temporary spool files a process killed while
// creating a trail left, but not one whose creator still runs.
func TestRecoverRemovesStaleNewFiles(t *testing.T) {
	dir := t.TempDir()
	key, err := LoadOrCreateKey(filepath.Join(dir, "k"))
	if err != nil {
		t.Fatal(err)
	}
	spool := filepath.Join(dir, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	stale := SpoolPath(spool, "job1") + ".new-4194304-1" // no such pid
	mine := SpoolPath(spool, "job2") + ".new-" + strconv.Itoa(os.Getpid()) + "-1"
	for _, f := range []string{stale, mine} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Recover(context.Background(), spool, "r1", key); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Errorf("the stale %s was left", filepath.Base(stale))
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("a live creator's %s was removed", filepath.Base(mine))
	}
}
