package runner

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// pullPolicies are the pull policies an image of the job is had with:
// those of want (the job's, GitLab's image:pull_policy) that the admin
// allows, in the job's order, as gitlab-runner takes them; the runner's
// own when want is empty. None allowed is an error naming key.
func (r *Runner) pullPolicies(key string, want []string) ([]executors.PullPolicy, error) {
	own := r.cfg.Pull
	if own == "" {
		own = executors.PullIfNotPresent
	}
	if len(want) == 0 {
		return []executors.PullPolicy{own}, nil
	}
	asked, err := executors.ParsePullPolicies(key, want)
	if err != nil {
		return nil, err
	}
	allowed := r.cfg.AllowedPull
	if len(allowed) == 0 {
		allowed = []executors.PullPolicy{own}
	}
	var out []executors.PullPolicy
	for _, p := range asked {
		if slices.Contains(allowed, p) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s %v: none of them is allowed on this runner (allowed: %v; an admin allows more with allowed_pull_policies)", key, asked, allowed)
	}
	return out, nil
}

// choosePull settles the pull policies of the job's image and of its
// services before anything of the job exists.
func (e *execution) choosePull() error {
	var errs []error
	var err error
	if e.pull, err = e.r.pullPolicies("image.pull_policy", e.j.Pull); err != nil {
		errs = append(errs, err)
	}
	e.svcPull = make([][]executors.PullPolicy, len(e.j.Services))
	for i, s := range e.j.Services {
		if e.svcPull[i], err = e.r.pullPolicies(fmt.Sprintf("services[%d].pull_policy", i), s.Pull); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// firstPull is the first policy the job's image is tried with; the
// runner's when choosePull has not run.
func (e *execution) firstPull() executors.PullPolicy {
	if len(e.pull) == 0 {
		return e.r.cfg.Pull
	}
	return e.pull[0]
}

// withPull calls create with each of pols in turn while it fails for
// want of the image (executors.ErrImageNotFound), as gitlab-runner tries
// a job's pull policies, and says so in the job log. No policies: the
// executor's default.
func (e *execution) withPull(image string, pols []executors.PullPolicy, create func(executors.PullPolicy) error) error {
	if len(pols) == 0 {
		pols = []executors.PullPolicy{""}
	}
	var err error
	for i, p := range pols {
		if i > 0 {
			fmt.Fprintf(e.out, "Getting image %s with pull policy %q failed: %v\nTrying pull policy %q\n", image, pols[i-1], err, p)
		}
		if err = create(p); err == nil || !errors.Is(err, executors.ErrImageNotFound) {
			return err
		}
	}
	return err
}

// checkImages refuses a job whose image or a service's image the
// runner's allowed_images / allowed_services do not allow.
func (r *Runner) checkImages(j *job.Job) error {
	errs := []error{allowedImage("image", j.Image, "allowed_images", r.cfg.AllowedImages)}
	for i, s := range j.Services {
		errs = append(errs, allowedImage(fmt.Sprintf("services[%d] image", i), s.Image, "allowed_services", r.cfg.AllowedServices))
	}
	if err := errors.Join(errs...); err != nil {
		return &DeniedError{Err: err}
	}
	return nil
}

// allowedImage is nil when image matches patterns (the setting named
// key), else an error naming what, the image and the setting.
func allowedImage(what, image, key string, patterns []string) error {
	if executors.ImageAllowed(image, patterns) {
		return nil
	}
	return fmt.Errorf("%s %q is not allowed on this runner (%s: %s)", what, image, key, strings.Join(patterns, ", "))
}
