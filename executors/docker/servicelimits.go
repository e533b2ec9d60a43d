package docker

import (
	"fmt"

	"github.com/airlock-ci/airlock/executors"
)

// ServiceLimits are the limits of a job's service containers (GitLab's
// and GitHub's services:, gitlab-runner's service_memory and kin); a
// zero field takes the job container's. Each service is a container of
// its own with limits of its own: without these, a job with three
// services could use four times the memory its container may.
type ServiceLimits struct {
	PidsLimit int64   `toml:"service_pids_limit"`
	Memory    string  `toml:"service_memory"`
	CPUs      float64 `toml:"service_cpus"`
}

// Limits returns the limits to give a service (zero fields: the job's).
func (s ServiceLimits) Limits() executors.Limits {
	l := executors.Limits{Pids: s.PidsLimit, CPUs: s.CPUs}
	if s.Memory != "" {
		l.Memory, _ = ParseBytes(s.Memory)
	}
	return l
}

// Validate reports bad values under prefix; shm is the shm_size a
// service's /dev/shm gets, which its memory must hold.
func (s ServiceLimits) Validate(prefix, shm string) []error {
	var errs []error
	if s.PidsLimit < 0 {
		errs = append(errs, fmt.Errorf("%s.service_pids_limit: must not be negative", prefix))
	}
	if s.CPUs < 0 {
		errs = append(errs, fmt.Errorf("%s.service_cpus: must not be negative", prefix))
	}
	if s.Memory == "" {
		return errs
	}
	mem, err := ParseBytes(s.Memory)
	if err != nil {
		return append(errs, fmt.Errorf("%s.service_memory: %w", prefix, err))
	}
	want := int64(executors.DefaultShmSize)
	if shm != "" {
		if want, err = ParseBytes(shm); err != nil {
			return errs // shm_size's own error says it
		}
	}
	if mem < want {
		errs = append(errs, fmt.Errorf("%s.service_memory %s: less than the services' /dev/shm (%s.shm_size, %d MiB), which counts against it", prefix, s.Memory, prefix, want>>20))
	}
	return errs
}
