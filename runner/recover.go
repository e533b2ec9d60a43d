package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/procs"
)

// labelOwner marks a job container with the process that runs it, so that
// recovery leaves the jobs of live airlock processes alone.
const labelOwner = "io.airlock.owner"

// ownerFile in a job's runtime directory names the process that runs it.
const ownerFile = "owner"

// partialPrefix starts the name of a runtime or workspace directory being
// created: ".new-<owner>-<random>".
const partialPrefix = ".new-"

// legacyPartialAge is how old a partial directory without any owner
// (made by an older airlock) must be before a sweep removes it.
const legacyPartialAge = 10 * time.Minute

// partialDead reports whether a partial directory was left by a process
// that is gone: the owner in its name (or, from older versions, its owner
// file) is dead, or it has no owner at all and is older than
// legacyPartialAge (a crash between creating it and writing the owner).
func partialDead(dir string) bool {
	rest := strings.TrimPrefix(filepath.Base(dir), partialPrefix)
	if i := strings.LastIndexByte(rest, '-'); i > 0 {
		if o, err := procs.Parse(rest[:i]); err == nil {
			return !o.Alive()
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, ownerFile)); err == nil {
		o, err := procs.Parse(strings.TrimSpace(string(b)))
		return err != nil || !o.Alive()
	}
	st, err := os.Stat(dir)
	return err == nil && time.Since(st.ModTime()) > legacyPartialAge
}

// Recovered is a job of this runner that did not finish before its
// process died: its credentials are revoked, its container, network and
// runtime files removed and its audit trail sealed with runner_crashed.
type Recovered struct {
	JobID string
	// Trail is where the sealed audit trail is delivered ("" if the job
	// had none).
	Trail string
}

// Recover cleans up after jobs of this runner whose process died (a crash,
// a SIGKILL): revoke, remove leftovers, seal their audit trails. Jobs of
// other live airlock processes sharing the host and state directory, and
// everything of other runners, are left alone. Run it before the first job.
func (r *Runner) Recover(ctx context.Context) ([]Recovered, error) {
	var errs []error
	jobs := map[string]*Recovered{}
	found := func(id string) *Recovered {
		if jobs[id] == nil {
			jobs[id] = &Recovered{JobID: id}
		}
		return jobs[id]
	}
	if r.Broker != nil {
		recs, err := r.Broker.Recover(ctx)
		errs = append(errs, err)
		for _, j := range recs {
			found(j.ID)
		}
	}
	if reaper, ok := r.exec.(executors.Reaper); ok {
		left, err := reaper.Leftovers(ctx, r.cfg.RunnerID)
		errs = append(errs, err)
		for _, l := range left {
			if o, err := procs.Parse(l.Labels[labelOwner]); err == nil && o.Alive() {
				continue
			}
			errs = append(errs, reaper.RemoveLeftover(ctx, l))
			if l.JobID != "" { // a cgroup alone names no job
				found(l.JobID)
			}
		}
	}
	if r.Network != nil {
		errs = append(errs, r.Network.Sandbox.Sweep(ctx))
	}
	errs = append(errs, r.sweepRuntime(found), r.sweepWorkspaces())
	if r.Audit != nil {
		// Trails the broker's revocations reopened are sealed here; the
		// rest of the crashed jobs' trails by audit.Recover.
		sealed, err := r.Audit.sealCrashed(ctx)
		errs = append(errs, err)
		res, err := audit.Recover(ctx, r.Audit.SpoolDir, r.cfg.RunnerID, r.Audit.Key, audit.WithDurable(r.Audit.Kick))
		errs = append(errs, err)
		for _, id := range append(sealed, res.Sealed...) {
			if kind := ownTrailKind(id); kind != "" {
				// An autoscaler's or a peer revocation's trail: no job.
				r.log.Warn("sealed an audit trail of the runner's own work that a crash left open", "trail", id, "kind", kind)
				continue
			}
			found(id).Trail = r.Audit.deliveredPath(id)
		}
		// Callers upload or report the sealed trails: wait (bounded) until
		// the directory sink holds them.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for _, id := range append(sealed, res.Sealed...) {
			errs = append(errs, awaitDelivered(wctx, r.Audit.deliveredPath(id)))
		}
		cancel()
	}
	out := make([]Recovered, 0, len(jobs))
	for _, j := range jobs {
		if j.JobID != "" {
			out = append(out, *j)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].JobID < out[b].JobID })
	for _, j := range out {
		r.log.Warn("recovered a job left by a crashed runner", "job", j.JobID)
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("recovering: %w", err)
	}
	return out, nil
}

// sweepRuntime removes the runtime directories of this runner's jobs whose
// process is gone.
func (r *Runner) sweepRuntime(found func(string) *Recovered) error {
	base := filepath.Join(r.cfg.RuntimeDir, "jobs")
	ents, err := os.ReadDir(base)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing runtime directories: %w", err)
	}
	var errs []error
	prefix := r.cfg.RunnerID + "-"
	for _, e := range ents {
		// ".new-" directories are being created (see makeRuntimeDir); one
		// whose owner is dead was left by a crash in between.
		partial := strings.HasPrefix(e.Name(), partialPrefix)
		if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) && !partial {
			continue
		}
		dir := filepath.Join(base, e.Name())
		if partial {
			if partialDead(dir) {
				errs = append(errs, os.RemoveAll(dir))
			}
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err == nil {
			if o, err := procs.Parse(strings.TrimSpace(string(b))); err == nil && o.Alive() {
				continue
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing runtime directory %s: %w", dir, err))
			continue
		}
		found(strings.TrimPrefix(e.Name(), prefix))
	}
	return errors.Join(errs...)
}
