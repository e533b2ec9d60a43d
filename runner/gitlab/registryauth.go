package gitlab

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// dockerAuthConfig is DOCKER_AUTH_CONFIG: a Docker client config.json.
type dockerAuthConfig struct {
	Auths map[string]struct {
		Auth     string `json:"auth"`
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"auths"`
	CredsStore  string            `json:"credsStore"`
	CredHelpers map[string]string `json:"credHelpers"`
}

// authEntry is one auths entry of a DOCKER_AUTH_CONFIG, its auth string
// decoded.
type authEntry struct {
	key, auth, user, pass string
	badAuth               bool // auth is not base64 of user:password
}

// entries are the config's auths, sorted by key.
func (c *dockerAuthConfig) entries() []authEntry {
	keys := make([]string, 0, len(c.Auths))
	for k := range c.Auths {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]authEntry, 0, len(keys))
	for _, k := range keys {
		a := c.Auths[k]
		en := authEntry{key: k, auth: a.Auth, user: a.Username, pass: a.Password}
		if a.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(a.Auth))
			u, p, found := strings.Cut(string(dec), ":")
			en.user, en.pass, en.badAuth = u, p, err != nil || !found
		}
		out = append(out, en)
	}
	return out
}

// convertRegistryAuth gives the job the credentials its image and
// services are pulled with: GitLab's (credentials of type registry, the
// job token for the project's container registry), then the job's
// DOCKER_AUTH_CONFIG, which wins for the same registry (as with
// gitlab-runner). No error names a password, a token or the variable's
// content.
func (r *JobResponse) convertRegistryAuth(j *job.Job) []error {
	var errs []error
	for i, c := range r.Credentials {
		if !strings.EqualFold(c.Type, "registry") {
			continue // GitLab sends no other type today; none is used
		}
		host := executors.NormalizeRegistry(c.URL)
		if host == "" || c.Username == "" {
			errs = append(errs, fmt.Errorf("credentials[%d]: a registry credential without url or username", i))
			continue
		}
		j.RegistryAuth = append(j.RegistryAuth, job.RegistryAuth{Registry: host, Username: c.Username, Password: c.Password})
	}
	raw, ok := r.variable("DOCKER_AUTH_CONFIG")
	if !ok || strings.TrimSpace(raw) == "" {
		return errs
	}
	var cfg dockerAuthConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return append(errs, fmt.Errorf("variable DOCKER_AUTH_CONFIG: not JSON (syntax error at byte %d)", se.Offset))
		}
		return append(errs, errors.New("variable DOCKER_AUTH_CONFIG: not a Docker config.json (want {\"auths\": {\"HOST\": {\"auth\": \"...\"}}})"))
	}
	if cfg.CredsStore != "" || len(cfg.CredHelpers) > 0 {
		errs = append(errs, errors.New("variable DOCKER_AUTH_CONFIG: credsStore and credHelpers are not supported by Airlock (they run programs on the runner host); give the credentials in auths"))
	}
	for _, en := range cfg.entries() {
		h, host, user, pass := en.key, executors.NormalizeRegistry(en.key), en.user, en.pass
		if en.badAuth {
			errs = append(errs, fmt.Errorf("variable DOCKER_AUTH_CONFIG: auths[%q].auth: not base64 of user:password", truncate(h)))
			continue
		}
		if host == "" || user == "" {
			errs = append(errs, fmt.Errorf("variable DOCKER_AUTH_CONFIG: auths[%q]: no registry or username", truncate(h)))
			continue
		}
		j.RegistryAuth = append(j.RegistryAuth, job.RegistryAuth{Registry: host, Username: user, Password: pass})
	}
	return errs
}
