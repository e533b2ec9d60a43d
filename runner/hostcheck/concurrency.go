package hostcheck

import (
	"fmt"

	"github.com/airlock-ci/airlock/runner/config"
)

// checkConcurrency warns when the job requests the agent keeps in flight
// outnumber concurrent. Each waiting request holds one of concurrent's
// slots (a job it brings must have room), and a GitHub registration's
// long poll waits about 50 s: with fewer slots than requests, a job from
// one source waits until another source's request ends.
func checkConcurrency(cfg *config.Config) Result {
	r := Result{Name: "concurrency"}
	gitlab := 0
	for _, rc := range cfg.Runners {
		n := max(rc.RequestConcurrency, 1)
		if rc.Limit > 0 {
			n = min(n, rc.Limit)
		}
		gitlab += n
	}
	github := len(cfg.GitHub)
	requests := gitlab + github
	r.Detail = fmt.Sprintf("concurrent = %d; at most %d job requests in flight (%d GitLab, %d GitHub)", cfg.Concurrent, requests, gitlab, github)
	if requests <= cfg.Concurrent {
		return r
	}
	r.Status = Warn
	r.Detail += ": each holds a slot while it waits (a GitHub long poll about 50 s), so a job from one source can wait until another's request ends"
	r.Fix = fmt.Sprintf("set concurrent = %d (or more) in the configuration", requests)
	return r
}
