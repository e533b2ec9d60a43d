// Package gitlab is Airlock's client for the GitLab runner API: runner
// registration and verification, the job request long poll, the
// incremental job trace, the final job state and artifact upload. It
// converts GitLab's job payload into the normalized job.Job and knows
// nothing of executors.
//
// The protocol follows gitlab-runner's network client: runner calls
// authenticate with the runner token in the JSON body, job calls with the
// JOB-TOKEN header. A job's life with this package:
//
//	c, _ := gitlab.New(cfg.URL, gitlab.WithLogger(log), gitlab.WithVersion(v, rev))
//	sysID, _ := gitlab.SystemID(stateDir)
//	creds, err := c.Verify(ctx, cfg.Token, sysID)          // at start
//	p := &gitlab.Poller{Client: c, Token: cfg.Token, SystemID: sysID}
//	resp, err := p.Next(ctx)                                // *PayloadError: c.FailJob(ctx, pe.ID, pe.Token, ...)
//	j, err := resp.ToJob()                                  // error: c.FailJob(ctx, resp.ID, resp.Token, ReasonRunnerSystemFailure, err.Error())
//	tw := c.NewTraceWriter(resp.ID, resp.Token, gitlab.TraceOptions{
//		FailureReasons: resp.Features.FailureReasons,
//		OnCancel: ..., OnAbort: ...})
//	tw.Start(ctx)                                           // masker(resp.MaskPhrases()...) -> tw
//	c.UploadArtifact(ctx, resp.ID, resp.Token, "airlock-audit.zip", f, size, gitlab.ArtifactOptions{})
//	tw.Finish(ctx, gitlab.FinalState{State: gitlab.StateFailed, FailureReason: gitlab.ReasonScriptFailure, ExitCode: 2})
//
// Jobs declare the credentials and egress they need in two CI variables,
// AIRLOCK_SECRETS and AIRLOCK_EGRESS (see SecretsVariable and
// EgressVariable); the admin's grants decide what they get.
package gitlab
