package github

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/runner/job"
)

// serviceOptionNames are the `docker create` flags a service's options
// may hold: the health check (GitHub's documented use, which the job
// then waits on), the entrypoint and environment. Anything else is
// refused by name: publishing, mounts, privileges and the like have no
// place in a job's sandbox.
var serviceOptionNames = []string{"--health-cmd", "--health-interval", "--health-timeout", "--health-retries",
	"--health-start-period", "--no-healthcheck", "--entrypoint", "-e", "--env"}

// splitOptions splits a container options string into words as a shell
// would for the flags above: blanks separate, single quotes keep
// everything, double quotes keep all but a backslash before " or \.
func splitOptions(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("a single quote is not closed")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("a double quote is not closed")
			}
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// flag is one flag of an options string with its value.
type flag struct{ name, val string }

// parseFlags splits options into the flags allowed names, with their
// values (as "--name=value" or "--name value"; those in bare take none).
// Every problem is reported, naming the flag.
func parseFlags(options string, allowed, bare []string) ([]flag, []error) {
	words, err := splitOptions(options)
	if err != nil {
		return nil, []error{err}
	}
	var flags []flag
	var errs []error
	for i := 0; i < len(words); i++ {
		w := words[i]
		name, val, inline := strings.Cut(w, "=")
		if !strings.HasPrefix(name, "-") {
			errs = append(errs, fmt.Errorf("%q: not a flag", w))
			continue
		}
		if !slices.Contains(allowed, name) {
			errs = append(errs, fmt.Errorf("%s is not supported by Airlock (supported: %s)", name, strings.Join(allowed, ", ")))
			if !inline && i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") {
				i++ // its value, most likely
			}
			continue
		}
		if slices.Contains(bare, name) {
			if inline {
				errs = append(errs, fmt.Errorf("%s takes no value", name))
			}
			flags = append(flags, flag{name: name})
			continue
		}
		if !inline {
			if i+1 >= len(words) {
				errs = append(errs, fmt.Errorf("%s: no value", name))
				continue
			}
			i++
			val = words[i]
		}
		flags = append(flags, flag{name, val})
	}
	return flags, errs
}

// envFlag reads the KEY=VALUE of an -e/--env flag (a bare KEY, which
// `docker create` fills from its own environment, is refused).
func envFlag(f flag) (string, string, error) {
	k, v, ok := strings.Cut(f.val, "=")
	if !ok || !job.ValidVarName(k) {
		return "", "", fmt.Errorf("%s %q: want KEY=VALUE", f.name, k)
	}
	return k, v, nil
}

// jobContainerOptionNames are the flags a job container's options may
// hold: its environment, its user, the size of its /dev/shm (browsers
// under test want more than 64 MiB; it counts against the container's
// memory limit, which stays the admin's), and --init, which changes
// nothing (the job's processes always run under an init as PID 1).
// Anything else is refused by name.
var jobContainerOptionNames = []string{"-e", "--env", "-u", "--user", "--shm-size", "--init"}

// containerOptions is what a job container's options say.
type containerOptions struct {
	// env are the variables -e/--env set, delivered like container.env:
	// at each step's exec, never in the container's configuration.
	env  []job.KV
	user string // -u/--user, "" for the image's
	shm  int64  // --shm-size in bytes, 0 for the runner's
}

// jobContainerOptions reads a job container's options.
func jobContainerOptions(options string) (containerOptions, error) {
	flags, errs := parseFlags(options, jobContainerOptionNames, []string{"--init"})
	var o containerOptions
	for _, f := range flags {
		switch f.name {
		case "--init":
			continue
		case "-u", "--user":
			if !job.ValidUser(f.val) {
				// The value is not repeated: options may hold expressions.
				errs = append(errs, fmt.Errorf("%s: not a user name or uid, with an optional :group or :gid", f.name))
			}
			o.user = f.val
			continue
		case "--shm-size":
			n, err := docker.ParseBytes(f.val)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
			}
			o.shm = n
			continue
		}
		k, v, err := envFlag(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o.env = append(o.env, job.KV{Key: k, Value: v})
	}
	return o, errors.Join(errs...)
}

// applyServiceOptions sets what a service's options say on svc. Every
// problem is reported, naming the flag.
func applyServiceOptions(svc *job.Service, options string) error {
	flags, errs := parseFlags(options, serviceOptionNames, []string{"--no-healthcheck"})
	health := job.HealthCheck{}
	var healthSet, noHealth bool
	for _, f := range flags {
		name, val := f.name, f.val
		if name == "--no-healthcheck" {
			noHealth = true
			continue
		}
		duration := func(d *time.Duration) {
			v, err := time.ParseDuration(val)
			if err != nil || v < 0 {
				errs = append(errs, fmt.Errorf("%s %q: not a duration such as 10s", name, val))
				return
			}
			*d = v
			healthSet = true
		}
		switch name {
		case "--health-cmd":
			health.Test = []string{"CMD-SHELL", val}
			healthSet = true
		case "--health-interval":
			duration(&health.Interval)
		case "--health-timeout":
			duration(&health.Timeout)
		case "--health-start-period":
			duration(&health.StartPeriod)
		case "--health-retries":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				errs = append(errs, fmt.Errorf("%s %q: not a count", name, val))
				continue
			}
			health.Retries = n
			healthSet = true
		case "--entrypoint":
			svc.Entrypoint = []string{val}
		case "-e", "--env":
			k, v, err := envFlag(f)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			svc.Variables = append(svc.Variables, job.Variable{Key: k, Value: v, Raw: true})
		}
	}
	switch {
	case noHealth && healthSet:
		errs = append(errs, errors.New("--no-healthcheck with --health-* flags"))
	case noHealth:
		svc.Health = &job.HealthCheck{Test: []string{"NONE"}}
	case healthSet:
		svc.Health = &health
	}
	return errors.Join(errs...)
}
