// Package gitlab is Airlock's client for the GitLab runner API: runner
// registration and verification, the job request long poll, the
// incremental job trace, the final job state and artifact upload. It
// converts GitLab's job payload into the normalized job.Job and knows
// nothing of executors, and it does not import runner: it implements the
// agent's job.Coordinator and job.Lease.
//
// The protocol follows gitlab-runner's network client: runner calls
// authenticate with the runner token in the JSON body, job calls with the
// JOB-TOKEN header. The agent serves one Coordinator per [[runners]]
// entry:
//
//	sysID, _ := gitlab.SystemID(stateDir)
//	co, _ := gitlab.NewCoordinator(gitlab.CoordinatorConfig{Runner: rc, SystemID: sysID, Executor: "docker"})
//	lease, err := co.Acquire(ctx)      // (nil, nil): no job; rotates the runner token when due
//	j, err := lease.Job()              // ID "gitlab-<instance>-<id>", Instance = the GitLab URL
//	lease.Start(ctx, cancel, abort)    // trace streaming (a logstream.Streamer), Job-Status watch
//	masked := mask.New(lease.Log(), lease.Mask()...)
//	lease.Finish(ctx, outcome, trail)  // audit artifact, rest of the trace, PUT /jobs/:id
//
// After a crash, Coordinator.Resume rebuilds a lease from its journal
// record; its Finish appends to the trace GitLab holds (the acknowledged
// size and CRC are in the record) and fails the job. The lower-level
// pieces (Client.RequestJob, JobResponse.ToJob, TraceWriter,
// Client.UploadArtifact, Client.FailJob) can be used on their own.
//
// Jobs declare the credentials and egress they need in two CI variables,
// AIRLOCK_SECRETS and AIRLOCK_EGRESS (see SecretsVariable and
// EgressVariable); the admin's grants decide what they get.
package gitlab
