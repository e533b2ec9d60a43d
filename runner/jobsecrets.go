package runner

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/runner/job"
)

// resolveSecrets runs RunOptions.ResolveSecrets before anything of the
// job exists: the values become masked job variables, each read an audit
// record.
func (e *execution) resolveSecrets(ctx context.Context) error {
	vars, reads, revoke, err := e.opts.ResolveSecrets(ctx, e.out)
	e.secretsRevoke, e.secretReads = revoke, reads
	for _, v := range vars {
		e.masker.Add(v.Value)
	}
	if err != nil {
		return fmt.Errorf("resolving secrets: %w", err)
	}
	j := *e.j
	j.Variables = append(slices.Clone(e.j.Variables), vars...)
	e.j = &j
	for _, r := range reads {
		delivery := job.DeliverEnv
		if r.File {
			delivery = job.DeliverFile
		}
		e.trail.note(ctx, audit.NewCredentialMinted(r.Var, r.Source+":"+r.Server+"/"+r.Path+"#"+r.Field, r.Login, "", string(delivery), time.Time{}))
	}
	if len(reads) > 0 {
		fmt.Fprintf(e.out, "Resolved %d secret(s) from %s\n", len(reads), reads[0].Source)
	}
	return nil
}

// revokeSecrets revokes what resolveSecrets logged in with.
func (e *execution) revokeSecrets(ctx context.Context) error {
	if e.secretsRevoke == nil {
		return nil
	}
	err := e.secretsRevoke(ctx)
	for _, r := range e.secretReads {
		if err != nil {
			e.trail.note(ctx, audit.NewCredentialRevokeFailed(r.Var, r.Source+":"+r.Server, r.Login, 1, err))
		} else {
			e.trail.note(ctx, audit.NewCredentialRevoked(r.Var, r.Source+":"+r.Server, r.Login, ""))
		}
	}
	return err
}
