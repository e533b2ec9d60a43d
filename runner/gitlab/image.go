package gitlab

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// expander expands $VAR and ${VAR} with the job's variables, as
// gitlab-runner expands a service's name and alias.
func (r *JobResponse) expander() func(string) string {
	vars := map[string]string{}
	for _, v := range r.Variables {
		vars[v.Key] = v.Value
	}
	return func(s string) string { return os.Expand(s, func(k string) string { return vars[k] }) }
}

// convertImage takes the job image's entrypoint, pull_policy and
// image:docker: user and platform.
func (r *JobResponse) convertImage(j *job.Job) []error {
	errs := checkImageOptions("image", r.Image)
	j.Pull = r.Image.PullPolicy
	// The image's ENTRYPOINT, or image:entrypoint, wraps every step's
	// shell, as it wraps the shell of gitlab-runner's build container;
	// [""] and a plain shell leave the shell alone.
	switch ep := r.Image.Entrypoint; {
	case len(ep) == 0:
		j.EntrypointFromImage = true
	case !job.ShellEntrypoint(ep):
		j.StepEntrypoint = ep
	}
	// Expanded with public variables only: the user is in the
	// container's configuration, where no secret may be.
	u, private := r.expandPublic(r.Image.ExecutorOpts.Docker.User, nil)
	u = strings.TrimSpace(u)
	if len(private) > 0 {
		errs = append(errs, fmt.Errorf("image.docker.user: %s is not a public variable (a user name is in the container's configuration, where no secret may be)", strings.Join(private, ", ")))
	} else if u != "" {
		if !job.ValidUser(u) {
			errs = append(errs, fmt.Errorf("image.docker.user %q: not a user name or uid, with an optional :group or :gid", truncate(u)))
		}
		j.User = u
	}
	return errs
}

// expandPublic expands s with the job's public variables and the names
// in extra (which win), for what goes into container configuration; it
// also returns the names of variables s names that are not public (they
// expand to "").
func (r *JobResponse) expandPublic(s string, extra map[string]string) (string, []string) {
	public := map[string]string{}
	for _, v := range r.Variables {
		if v.Public && !v.Masked {
			public[v.Key] = v.Value
		} else {
			delete(public, v.Key)
		}
	}
	var private []string
	out := os.Expand(s, func(k string) string {
		if v, ok := extra[k]; ok {
			return v
		}
		v, ok := public[k]
		if _, known := r.variable(k); !ok && known {
			private = append(private, k)
		}
		return v
	})
	return out, private
}

// checkImageOptions checks what the job image and services share: the
// pull policies' names and the platform, which must be this host's (no
// emulation here).
func checkImageOptions(key string, im JobImage) []error {
	var errs []error
	if _, err := executors.ParsePullPolicies(key+".pull_policy", im.PullPolicy); err != nil {
		errs = append(errs, err)
	}
	if p := strings.TrimSpace(im.ExecutorOpts.Docker.Platform); p != "" && !hostPlatform(p) {
		errs = append(errs, fmt.Errorf("%s.docker.platform %q is not supported by Airlock: jobs run on this host's platform, linux/%s", key, truncate(p), runtime.GOARCH))
	}
	return errs
}

// hostPlatform: p names this host's OS and architecture (os/arch, with
// an arm64 host's v8 variant).
func hostPlatform(p string) bool {
	p = strings.ToLower(p)
	host := "linux/" + runtime.GOARCH
	return p == host || (runtime.GOARCH == "arm64" && p == host+"/v8")
}
