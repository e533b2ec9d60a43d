package job

import (
	"errors"
	"fmt"
	"strings"
)

// Variables every source reads a job's declarations from (GitLab job
// variables, GitHub job-level env).
const (
	// SecretsVariable declares the credentials the job needs: entries
	// separated by commas or white space, each NAME[:VAR][@DELIVERY].
	SecretsVariable = "AIRLOCK_SECRETS"
	// EgressVariable declares the job's egress: entries separated by
	// commas or white space, in netpolicy's syntax.
	EgressVariable = "AIRLOCK_EGRESS"
)

const maxDeclaredLen = 64 << 10

// ParseSecrets parses the AIRLOCK_SECRETS syntax: NAME[:VAR][@env|file|proxy]
// entries separated by commas or white space. Errors quote at most 40
// bytes of an entry.
func ParseSecrets(s string) ([]SecretRequest, error) {
	if len(s) > maxDeclaredLen {
		return nil, fmt.Errorf("longer than %d bytes", maxDeclaredLen)
	}
	var out []SecretRequest
	var errs []error
	for i, e := range SplitList(s) {
		rest := e
		var req SecretRequest
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			req.Delivery = Delivery(rest[at+1:])
			rest = rest[:at]
			if req.Delivery == "" || !req.Delivery.Valid() {
				errs = append(errs, fmt.Errorf("entry %d %q: delivery must be env, file or proxy", i, clip40(e)))
				continue
			}
		}
		if colon := strings.IndexByte(rest, ':'); colon >= 0 {
			req.Var = rest[colon+1:]
			rest = rest[:colon]
			if !ValidVarName(req.Var) {
				errs = append(errs, fmt.Errorf("entry %d %q: %q is not a valid variable name", i, clip40(e), clip40(req.Var)))
				continue
			}
		}
		req.Name = rest
		if !ValidSecretName(req.Name) {
			errs = append(errs, fmt.Errorf("entry %d %q: want NAME[:VAR][@env|file|proxy] with NAME of letters, digits, '.', '_', '-'", i, clip40(e)))
			continue
		}
		out = append(out, req)
	}
	return out, errors.Join(errs...)
}

// SplitList splits on commas and white space, dropping empty entries.
func SplitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
}

func clip40(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
