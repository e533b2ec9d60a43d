package job

import (
	"context"
	"io"
)

// SecretRead is one secret a coordinator resolved for a job from an
// external store (GitLab's secrets: from Vault), for the audit trail. It
// never holds the value.
type SecretRead struct {
	Var    string // the variable it is delivered in
	Source string // "vault"
	Server string // e.g. https://vault.example.com
	Path   string // engine path and secret path
	Field  string
	Login  string // the login's accessor (revoked when the job ends)
	File   bool   // delivered as a file variable
}

// SecretResolver is a Lease whose coordinator resolves secrets for the
// job on the host before anything of it runs (GitLab's secrets:). The
// agent passes ResolveSecrets as runner.RunOptions.ResolveSecrets: the
// variables it returns are masked and delivered like the job's own (file
// variables on the runtime tmpfs, values at exec time only, never in the
// container's configuration); revoke, when not nil, is called when the job
// ends, whatever happened. An error wrapping a *ReasonError ends the job
// with that reason. What the job's user should see (a retry) goes to log,
// the job's log.
type SecretResolver interface {
	ResolveSecrets(ctx context.Context, log io.Writer) (vars []Variable, reads []SecretRead, revoke func(context.Context) error, err error)
}
