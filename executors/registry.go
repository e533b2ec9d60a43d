package executors

import (
	"encoding/json"
	"errors"
	"io"
	"strings"

	"github.com/distribution/reference"
)

// RegistryAuth is a credential an image is pulled with: GitLab's job
// credentials (the job token for its container registry), the job's
// DOCKER_AUTH_CONFIG, GitHub's container.credentials. It is only ever
// sent to the engine with a pull, never kept in any configuration.
type RegistryAuth struct {
	// Registry is the host[:port] of image references ("docker.io" for
	// Docker Hub); a scheme or a path after it is ignored.
	Registry           string
	Username, Password string
}

// RegistryHost is the registry host of an image reference, as the engines
// name it ("docker.io" for Docker Hub), or "" for a reference that does
// not parse.
func RegistryHost(ref string) string {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ""
	}
	return reference.Domain(n)
}

// NormalizeRegistry turns a credential's registry ("https://index.docker.io/v1/",
// "registry.example.com:5050/") into the host of image references.
func NormalizeRegistry(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	s = strings.ToLower(s)
	switch s {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return s
}

// AuthFor returns the credential for host among auths (the last one
// given for it wins), or nil.
func AuthFor(host string, auths []RegistryAuth) *RegistryAuth {
	host = NormalizeRegistry(host)
	if host == "" {
		return nil
	}
	var found *RegistryAuth
	for i := range auths {
		if NormalizeRegistry(auths[i].Registry) == host {
			found = &auths[i]
		}
	}
	return found
}

// DrainProgress reads a Docker engine's pull or push progress stream to
// its end and returns the error the engine reports in it, if any (the
// call itself succeeds even when the pull fails).
func DrainProgress(rc io.ReadCloser) error {
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}
