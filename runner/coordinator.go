package runner

import "github.com/airlock-ci/airlock/runner/job"

// The agent's job sources. The interfaces are declared in runner/job (a
// leaf package) so that coordinators implement them without importing
// runner; see job.Coordinator and job.Lease for the contract.
type (
	Coordinator         = job.Coordinator
	Lease               = job.Lease
	ConcurrentRequester = job.ConcurrentRequester
	JournalUpdater      = job.JournalUpdater
	Summarizer          = job.Summarizer
	OrphanResumer       = job.OrphanResumer
	Collector           = job.Collector
)
