package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// RecoverResult says what Recover did with each spool file.
type RecoverResult struct {
	Sealed  []string // jobs sealed with a runner_crashed record
	Skipped []string // jobs left alone: open by a live Trail, or another runner's
}

// Recover seals every unsealed spool file in spoolDir whose Trail is not
// open (its flock is free): it appends a runner_crashed record (with the
// bytes of a torn last line that were cut off) and a signed seal with
// reason "runner_crashed". Files held by a live Trail or belonging to
// another runner id are skipped; already sealed files are left for the
// Shipper. Kick a Shipper afterwards to deliver them.
func Recover(ctx context.Context, spoolDir, runnerID string, key *Key, opts ...Option) (RecoverResult, error) {
	var res RecoverResult
	ents, err := os.ReadDir(spoolDir)
	if errors.Is(err, os.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("listing audit spool: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() && strings.Contains(e.Name(), SpoolExt+newMarker) {
			errs = append(errs, removeStaleNew(filepath.Join(spoolDir, e.Name())))
			continue
		}
		if e.IsDir() || !strings.HasSuffix(e.Name(), SpoolExt) {
			continue
		}
		job := strings.TrimSuffix(e.Name(), SpoolExt)
		if !ValidID(job) {
			continue
		}
		t, err := Open(spoolDir, runnerID, job, key, opts...)
		switch {
		case errors.Is(err, ErrSealed):
			continue
		case errors.Is(err, ErrLocked), errors.Is(err, ErrOtherRunner):
			res.Skipped = append(res.Skipped, job)
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("recovering audit trail of job %s: %w", job, err))
			continue
		}
		_, aerr := t.Log(ctx, NewRunnerCrashed("runner process ended before the trail was sealed", t.TruncatedBytes()))
		if aerr != nil {
			errs = append(errs, fmt.Errorf("recovering audit trail of job %s: %w", job, errors.Join(aerr, t.Close())))
			continue
		}
		if _, err := t.Seal(ctx, string(RunnerCrashed)); err != nil {
			errs = append(errs, fmt.Errorf("recovering audit trail of job %s: %w", job, err))
			continue
		}
		res.Sealed = append(res.Sealed, job)
	}
	return res, errors.Join(errs...)
}

// removeStaleNew removes a spool file's temporary name (createLocked's
// "<job>.jsonl.new-<pid>-<n>") that a process killed between creating
// and linking it left: its pid is gone and nobody holds its lock.
func removeStaleNew(path string) error {
	rest := path[strings.LastIndex(path, newMarker)+len(newMarker):]
	pidText, _, _ := strings.Cut(rest, "-")
	if pid, err := strconv.Atoi(pidText); err == nil && pid > 0 && syscall.Kill(pid, 0) == nil {
		return nil // its creator may still be at work
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing leftover %s: %w", path, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil // held: in use
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing leftover %s: %w", path, err)
	}
	return nil
}
