// Package github speaks GitHub Actions' self-hosted runner protocol on the
// host: JIT configs and registration, the OAuth client assertion, the
// broker session and message long-poll, acquire/renew/complete in the run
// service and log upload through the results service. Coordinator serves
// one registration to the agent (runner.Coordinator); the runner's RSA key
// and OAuth token never leave this package, and the job token only reaches
// a job where a workflow passes it.
//
// The protocol is described in shared/research/github-runner-protocol.md;
// section numbers in comments refer to it.
package github
