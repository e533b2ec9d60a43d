package runner

import (
	"context"
	"fmt"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/leakscan"
)

// StoreLeakScan (for the wiring) scans with the store's values and each repository's mode
// from its policy (`airlock policy set --leak-scan`).
func StoreLeakScan(store *secrets.Store) *LeakScan {
	return &LeakScan{
		Values: func() (map[string]string, error) {
			infos, err := store.Secrets()
			if err != nil {
				return nil, err
			}
			vals := make(map[string]string, len(infos))
			for _, in := range infos {
				sec, err := store.Secret(in.Name)
				if err != nil {
					return nil, err
				}
				vals[in.Name] = string(sec.Value)
			}
			return vals, nil
		},
		Mode: func(repo, instance string) (leakscan.Mode, error) {
			p, ok, err := store.EgressCeiling(repo, instance)
			if err != nil || !ok {
				return leakscan.DefaultMode, err
			}
			return leakscan.ParseMode(p.LeakScan)
		},
	}
}

// LeakScan scans what a job's change adds for credentials on the host
// before any of its code runs (see package leakscan). The runner calls it
// with the job's BeforeSHA..SHA, before grants are decided and before any
// container exists, in a host-side repository: RunOptions.GitDir
// (`airlock exec --git-dir`), or else the host-side clone that
// RunOptions.Workspace makes (the runner then clones first and copies the
// clone into the job later).
type LeakScan struct {
	// Scanner bounds the scan (size, time); its Values are ignored.
	Scanner leakscan.Scanner
	// Values returns every stored secret's value by name; it is called
	// for each scan and the values are kept only for its duration.
	Values func() (map[string]string, error)
	// Mode returns a repository's mode (leakscan.DefaultMode when it sets
	// none).
	Mode func(repo, instance string) (leakscan.Mode, error)
}

// leakScan runs the scan of the job's change in gitDir. Under block a
// finding is a *DeniedError (the job fails before its code runs); under
// warn the findings go to the job log. Both record leak_found and count it.
// A scan that cannot run is a warning in the log, not a failure.
func (e *execution) leakScan(ctx context.Context, gitDir string) error {
	ls := e.r.LeakScan
	if ls == nil || gitDir == "" || e.j.SHA == "" || e.scanned {
		return nil
	}
	e.scanned = true
	mode := leakscan.DefaultMode
	if ls.Mode != nil {
		m, err := ls.Mode(e.j.Repo, e.j.Instance)
		if err != nil {
			return fmt.Errorf("looking up the leak-scan mode of %s: %w", e.j.Repo, err)
		}
		mode = m
	}
	if mode == leakscan.Off {
		return nil
	}
	sc := ls.Scanner
	sc.Values = nil
	if ls.Values != nil {
		vals, err := ls.Values()
		if err != nil {
			return fmt.Errorf("reading stored secrets for the leak scan: %w", err)
		}
		sc.Values = vals
	}
	rep, err := sc.Scan(ctx, leakscan.Range{GitDir: gitDir, Base: e.j.BeforeSHA, Head: e.j.SHA})
	if err != nil {
		fmt.Fprintf(e.out, "\x1b[33;1mLeak scan could not run: %v\x1b[0;m\n", err)
		e.log.Warn("leak scan could not run", "error", err)
		return nil
	}
	for _, f := range rep.Findings {
		e.trail.note(ctx, audit.NewLeakFound(f.Commit, f.File, f.Line, f.Rule, f.Secret, f.Match, string(mode)))
		e.r.metrics.Load().LeakFound(f.Secret != "", string(mode))
	}
	if rep.Note != "" {
		fmt.Fprintf(e.out, "Leak scan: %s\n", rep.Note)
	}
	if rep.Cut != "" {
		fmt.Fprintf(e.out, "\x1b[33;1mLeak scan cut short: %s; the rest of the change was not scanned\x1b[0;m\n", rep.Cut)
	}
	if len(rep.Findings) == 0 {
		fmt.Fprintf(e.out, "Leak scan: no credentials in %d commit(s) of the change\n", rep.Commits)
		return nil
	}
	msg := fmt.Sprintf("leak scan found %d credential(s) in the change:", len(rep.Findings))
	for _, f := range rep.Findings {
		msg += "\n  " + f.String()
	}
	if rep.StoredSecrets() {
		msg += "\n  a stored secret's value is in git history now: rotate it (airlock secret set), whatever else you do"
	}
	if mode == leakscan.Block {
		return &DeniedError{Err: fmt.Errorf("%s\n  (leak scan mode block for %s: remove them from the change's commits)", msg, e.j.Repo)}
	}
	fmt.Fprintf(e.out, "\x1b[33;1mWarning: %s\x1b[0;m\n", msg)
	return nil
}
