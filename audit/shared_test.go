package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Environment of the helper process of TestTwoProcessesShareOneStateDir.
const (
	helperEnv   = "AIRLOCK_AUDIT_SHARE_HELPER" // process name
	helperState = "AIRLOCK_AUDIT_SHARE_STATE"
	helperJobs  = 4
	helperRecs  = 400
)

// TestShareHelper is not a test: it is one of the processes of
// TestTwoProcessesShareOneStateDir (it returns at once otherwise). It runs
// a shipper with a directory sink over the shared spool, writes busy
// trails of its own jobs, seals them and waits until their copies are
// sealed.
func TestShareHelper(t *testing.T) {
	name := os.Getenv(helperEnv)
	if name == "" {
		return
	}
	state := os.Getenv(helperState)
	key, err := LoadOrCreateKey(filepath.Join(state, "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	spool := SpoolDir(state)
	dir := filepath.Join(state, "audit")
	sh := NewShipper(spool, []Sink{NewDirSink(dir)}, ShipperOptions{Interval: 5 * time.Millisecond, MaxBatch: 37})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sh.Run(ctx) }()
	errs := make(chan error, helperJobs)
	for j := range helperJobs {
		go func() {
			job := fmt.Sprintf("%s-job-%d", name, j)
			tr, err := Open(spool, "r1", job, key, WithDurable(sh.Kick))
			if err != nil {
				errs <- err
				return
			}
			for i := range helperRecs {
				ev := NewDNS(fmt.Sprintf("q%d.busy.test", i), "A", VerdictDenied, "name not allowed")
				if i%3 == 0 {
					_, err = tr.LogBatch(ctx, []Event{ev, ev})
				} else {
					_, err = tr.Log(ctx, ev)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			_, err = tr.Seal(ctx, "finished")
			errs <- err
		}()
	}
	for range helperJobs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for j := 0; j < helperJobs; {
		b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%s-job-%d%s", name, j, SpoolExt)))
		if bytes.Contains(b, []byte(`"type":"seal"`)) {
			j++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("copy of %s-job-%d not sealed within 60s", name, j)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestTwoProcessesShareOneStateDir runs two processes, each with its own
// shipper over one spool directory (two `airlock exec` at once), while
// both write busy trails; every copy in the directory sink must verify:
// each record exactly once, in order, sealed.
func TestTwoProcessesShareOneStateDir(t *testing.T) {
	state := t.TempDir()
	if _, err := LoadOrCreateKey(filepath.Join(state, "audit.key")); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for _, name := range []string{"a", "b"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestShareHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"="+name, helperState+"="+state)
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		outs = append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i])
		}
	}
	key, err := LoadKey(filepath.Join(state, "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		for j := range helperJobs {
			path := filepath.Join(state, "audit", name+"-job-"+strconv.Itoa(j)+SpoolExt)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(bytes.NewReader(b), key.Public())
			if err != nil {
				t.Errorf("verify %s: %v", path, err)
				continue
			}
			if want := int64(helperRecs + (helperRecs+2)/3); rep.Records != want {
				t.Errorf("%s: %d records, want %d", path, rep.Records, want)
			}
		}
	}
}

// TestDirSinkRefusesSealedCopy: a trail delivered under a job id whose
// copy is already sealed (an id that recurred) is refused, not skipped
// or appended, and the sealed copy stays intact.
func TestDirSinkRefusesSealedCopy(t *testing.T) {
	key := testKey(t)
	ctx := context.Background()
	deliverAll := func(spool string, d *DirSink) error {
		sh := NewShipper(spool, []Sink{d}, ShipperOptions{KeepSpool: true})
		return sh.Drain(ctx)
	}
	write := func(spool string, n int) {
		tr, err := Open(spool, "r1", "job-7", key)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if _, err := tr.Log(ctx, NewStepStarted(fmt.Sprint("s", i))); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := tr.Seal(ctx, "finished"); err != nil {
			t.Fatal(err)
		}
	}
	d := NewDirSink(t.TempDir())
	first, second := t.TempDir(), t.TempDir()
	write(first, 5)
	if err := deliverAll(first, d); err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(d.Dir, "job-7"+SpoolExt)
	before, _ := os.ReadFile(copyPath)
	write(second, 3) // the same job id again, another trail
	err := deliverAll(second, d)
	if !errors.Is(err, ErrCopyConflict) {
		t.Fatalf("delivering another trail under a sealed copy's job id: %v, want ErrCopyConflict", err)
	}
	after, _ := os.ReadFile(copyPath)
	if !bytes.Equal(before, after) {
		t.Errorf("the sealed copy changed")
	}
	if _, err := Verify(bytes.NewReader(after), key.Public()); err != nil {
		t.Errorf("verify sealed copy: %v", err)
	}
	// Delivering the first trail again is a no-op, not a conflict.
	if err := NewShipper(first, []Sink{d}, ShipperOptions{KeepSpool: true}).Drain(ctx); err != nil {
		t.Errorf("re-delivering the same trail: %v", err)
	}
}
