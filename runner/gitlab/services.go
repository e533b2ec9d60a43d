package gitlab

import (
	"fmt"
	"strings"

	"github.com/airlock-ci/airlock/runner/job"
)

// maxServices bounds a job's services (gitlab-runner's services_limit is
// unlimited by default; a bound keeps a payload from starting hundreds).
const maxServices = 16

// convertServices turns services: into job services with every alias
// GitLab defines: the user's (split on commas and white space) and the
// two derived from the image name (research §6). An alias an earlier
// service took is skipped.
func (r *JobResponse) convertServices(j *job.Job) []error {
	var errs []error
	if len(r.Services) > maxServices {
		return []error{fmt.Errorf("services: %d services, at most %d", len(r.Services), maxServices)}
	}
	expand := r.expander()
	taken := map[string]bool{}
	for i, s := range r.Services {
		name := strings.TrimSpace(expand(s.Name))
		if name == "" || !cleanText(name) || strings.ContainsAny(name, " \t") {
			errs = append(errs, fmt.Errorf("services[%d].name: missing or not an image name", i))
			continue
		}
		key := fmt.Sprintf("services[%d]", i)
		errs = append(errs, checkImageOptions(key, s)...)
		if s.ExecutorOpts.Docker.User != "" {
			errs = append(errs, fmt.Errorf("%s.docker.user is not supported by Airlock: a service runs as its image's user", key))
		}
		svc := job.Service{Image: name, Pull: s.PullPolicy, Entrypoint: s.Entrypoint, Command: s.Command}
		if len(svc.Entrypoint) == 0 {
			svc.Entrypoint = nil
		}
		if len(svc.Command) == 0 {
			svc.Command = nil
		}
		candidates := splitList(expand(s.Alias))
		candidates = append(candidates, job.ServiceAliases(name)...)
		for _, a := range candidates {
			if !job.ValidHostName(a) {
				errs = append(errs, fmt.Errorf("services[%d].alias %q: not a valid host name", i, truncate(a)))
				continue
			}
			if !taken[a] {
				taken[a] = true
				svc.Aliases = append(svc.Aliases, a)
			}
		}
		for k, v := range s.Variables {
			if !job.ValidVarName(v.Key) {
				errs = append(errs, fmt.Errorf("services[%d].variables[%d] %q: not a valid variable name", i, k, truncate(v.Key)))
				continue
			}
			svc.Variables = append(svc.Variables, job.Variable{Key: v.Key, Value: expand(v.Value), Public: true})
		}
		j.Services = append(j.Services, svc)
	}
	return errs
}
