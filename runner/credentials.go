package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/mask"
)

// jobCredentials are the credentials minted for one job and how each
// reaches it.
type jobCredentials struct {
	creds *secrets.JobCredentials
	env   []string               // env and file deliveries, proxy surrogates
	bound []netpolicy.Credential // proxy deliveries, for the gateway
	hosts []string               // hosts bound to proxy deliveries
	mask  []string               // every value and surrogate
}

// credentials decides and mints the job's declared credentials (nothing is
// minted if any is refused) and prepares their delivery: variables for the
// steps' environment, files in the runtime directory, surrogates for the
// gateway. dir is the job's runtime directory on the host.
func (r *Runner) credentials(ctx context.Context, j *job.Job, dir string) (*jobCredentials, error) {
	creds, err := r.Broker.Prepare(ctx, secrets.IdentityOf(j), j.Secrets)
	if err != nil {
		var refused *secrets.RefusedError
		if errors.As(err, &refused) {
			return nil, &DeniedError{Err: err}
		}
		return nil, fmt.Errorf("minting credentials: %w", err)
	}
	jc := &jobCredentials{creds: creds}
	for _, v := range creds.MaskValues() {
		jc.mask = append(jc.mask, string(v))
	}
	for i := range creds.Creds {
		d := &creds.Creds[i]
		// What the job receives must be maskable: a value the masker
		// refuses would show in the job's output. Fail the job instead
		// (the credential is revoked with the others). An empty value
		// gives the job nothing (a client certificate only the gateway
		// presents).
		if err := mask.Validate(string(d.Value)); len(d.Value) > 0 && err != nil {
			return jc, fmt.Errorf("credential %s (grant %s): the value its backend minted cannot be masked in the job's output: %w", d.Secret, d.GrantID, err)
		}
		switch d.Delivery {
		case job.DeliverEnv:
			jc.env = append(jc.env, d.Var+"="+string(d.Value))
		case job.DeliverFile:
			name := "secret-" + d.Var
			if err := os.WriteFile(filepath.Join(dir, name), d.Value, 0o444); err != nil {
				return jc, fmt.Errorf("writing credential %s to its file: %w", d.Secret, err)
			}
			jc.env = append(jc.env, d.Var+"="+containerRunDir+"/"+name)
		case job.DeliverProxy:
			if r.Network == nil {
				return jc, &DeniedError{Err: fmt.Errorf("credential %s is granted for proxy delivery, but this runner has no egress gateway", d.Secret)}
			}
			header, tmpl := splitHeader(d.Header)
			jc.env = append(jc.env, d.Var+"="+string(d.Value))
			jc.bound = append(jc.bound, netpolicy.Credential{
				GrantID: d.GrantID, LeaseID: d.LeaseID, Surrogate: string(d.Value),
				Hosts: d.Hosts, Header: header, Template: tmpl, Value: d.Real,
			})
			jc.hosts = append(jc.hosts, d.Hosts...)
		case job.DeliverMTLS:
			if r.Network == nil {
				return jc, &DeniedError{Err: fmt.Errorf("credential %s is granted for mtls delivery, but this runner has no egress gateway", d.Secret)}
			}
			cert, err := secrets.ParseClientCert(d.Real, time.Now())
			if err != nil {
				return jc, fmt.Errorf("credential %s (mtls delivery): %w", d.Secret, err)
			}
			jc.bound = append(jc.bound, netpolicy.Credential{
				GrantID: d.GrantID, LeaseID: d.LeaseID, Hosts: d.Hosts, ClientCert: &cert,
			})
			jc.hosts = append(jc.hosts, d.Hosts...)
		default:
			return jc, fmt.Errorf("credential %s: unknown delivery %q", d.Secret, d.Delivery)
		}
	}
	return jc, nil
}

// splitHeader splits a grant's header template "Name: value {{value}}"
// into the header name and the value template.
func splitHeader(h string) (name, tmpl string) {
	if h == "" {
		return "", ""
	}
	name, tmpl, ok := strings.Cut(h, ":")
	if !ok {
		return strings.TrimSpace(h), ""
	}
	return strings.TrimSpace(name), strings.TrimSpace(tmpl)
}

// release revokes everything minted for the job.
func (r *Runner) release(ctx context.Context, jobID string, jc *jobCredentials) error {
	if jc != nil && jc.creds != nil {
		defer jc.creds.Wipe()
	}
	if err := r.Broker.Release(ctx, jobID); err != nil {
		return fmt.Errorf("revoking the credentials of job %s: %w", jobID, err)
	}
	return nil
}
