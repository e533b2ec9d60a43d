package github

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

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

// applyServiceOptions sets what a service's options say on svc. Every
// problem is reported, naming the flag.
func applyServiceOptions(svc *job.Service, options string) error {
	words, err := splitOptions(options)
	if err != nil {
		return err
	}
	var errs []error
	health := job.HealthCheck{}
	var healthSet, noHealth bool
	for i := 0; i < len(words); i++ {
		w := words[i]
		name, val, inline := strings.Cut(w, "=")
		if !strings.HasPrefix(name, "-") {
			errs = append(errs, fmt.Errorf("%q: not a flag", w))
			continue
		}
		if !slices.Contains(serviceOptionNames, name) {
			errs = append(errs, fmt.Errorf("%s is not supported by Airlock (supported: %s)", name, strings.Join(serviceOptionNames, ", ")))
			if !inline && i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") {
				i++ // its value, most likely
			}
			continue
		}
		if name == "--no-healthcheck" {
			if inline {
				errs = append(errs, fmt.Errorf("%s takes no value", name))
			}
			noHealth = true
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
			k, v, ok := strings.Cut(val, "=")
			if !ok || !job.ValidVarName(k) {
				errs = append(errs, fmt.Errorf("%s %q: want KEY=VALUE", name, k))
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
