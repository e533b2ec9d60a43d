package gitlab

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"unicode/utf8"
)

var (
	goos   = runtime.GOOS
	goarch = runtime.GOARCH
)

// Features are the capabilities advertised on job requests (gitlab-runner's
// FeaturesInfo). GitLab refuses to hand a job that needs an unadvertised
// feature (failing it as runner_unsupported) and changes its protocol for
// advertised ones, so set only what the runner really implements.
type Features struct {
	Variables               bool `json:"variables"`
	Image                   bool `json:"image"`
	Services                bool `json:"services"`
	Artifacts               bool `json:"artifacts"`
	Cache                   bool `json:"cache"`
	Shared                  bool `json:"shared"`
	UploadMultipleArtifacts bool `json:"upload_multiple_artifacts"`
	UploadRawArtifacts      bool `json:"upload_raw_artifacts"`
	Session                 bool `json:"session"`
	Terminal                bool `json:"terminal"`
	Refspecs                bool `json:"refspecs"`
	Masking                 bool `json:"masking"`
	Proxy                   bool `json:"proxy"`
	RawVariables            bool `json:"raw_variables"`
	ArtifactsExclude        bool `json:"artifacts_exclude"`
	FallbackCacheKeys       bool `json:"fallback_cache_keys"`
	MultiBuildSteps         bool `json:"multi_build_steps"`
	TraceReset              bool `json:"trace_reset"`
	TraceChecksum           bool `json:"trace_checksum"`
	TraceSize               bool `json:"trace_size"`
	VaultSecrets            bool `json:"vault_secrets"`
	Cancelable              bool `json:"cancelable"`
	ReturnExitCode          bool `json:"return_exit_code"`
	CancelGracefully        bool `json:"cancel_gracefully"`
	TwoPhaseJobCommit       bool `json:"two_phase_job_commit"`
}

// DefaultFeatures is what this package itself implements: variables and
// image are converted, the trace supports reset (412), checksum and size,
// Job-Status cancel is watched, the exit code and masking are reported,
// raw artifacts can be uploaded. Refspecs, multi_build_steps (release
// steps), vault_secrets, services, cache and two-phase commit are off.
func DefaultFeatures() Features {
	return Features{
		Variables:      true,
		Image:          true,
		TraceReset:     true,
		TraceChecksum:  true,
		TraceSize:      true,
		Cancelable:     true,
		ReturnExitCode: true,
		Masking:        true,
		// Artifacts, reports, exclude and the host-local cache are built
		// by Pipeline (the agent runs it for every job).
		Artifacts:               true,
		UploadMultipleArtifacts: true,
		UploadRawArtifacts:      true,
		ArtifactsExclude:        true,
		Cache:                   true,
		FallbackCacheKeys:       true,
		// services: start in the job's network namespace (the runner's
		// executor must implement executors.ServiceStarter).
		Services: true,
		// secrets: from Vault with id_tokens (Pipeline.ResolveSecrets).
		VaultSecrets: true,
	}
}

// RequestJob asks GitLab for a job for the runner with token. It returns
// (nil, nil) when there is none (204, or 409: another request took it; poll
// again). 403 gives ErrTokenInvalid; 429, 5xx and transport failures give a
// retryable *APIError carrying the server's Retry-After. A job whose
// payload cannot be decoded gives a *PayloadError: fail that job with
// FailJob when it carries an id and token.
func (c *Client) RequestJob(ctx context.Context, token, systemID string) (*JobResponse, error) {
	const op = "requesting job"
	c.mu.Lock()
	last := c.lastUpdate[token]
	c.mu.Unlock()
	info := c.info()
	body := map[string]any{"token": token, "info": info}
	if systemID != "" {
		body["system_id"] = systemID
	}
	if last != "" {
		body["last_update"] = last
	}
	r, err := c.do(ctx, call{op: op, method: http.MethodPost, url: c.endpoint("/jobs/request"), body: body,
		header: map[string]string{"RUNNER-TOKEN": token}})
	if err != nil {
		return nil, err
	}
	if lu := r.header.Get("X-GitLab-Last-Update"); lu != "" {
		c.mu.Lock()
		c.lastUpdate[token] = lu
		c.mu.Unlock()
	}
	switch r.status {
	case http.StatusCreated:
		return ParseJobResponse(r.body)
	case http.StatusNoContent, http.StatusConflict:
		return nil, nil
	case http.StatusForbidden:
		return nil, &APIError{Op: op, Status: r.status, Err: ErrTokenInvalid}
	}
	return nil, unexpected(op, r)
}

// PayloadError is a job GitLab assigned whose payload is malformed or
// hostile. ID and Token are set when they could be read; then the job
// should be failed with FailJob(ctx, ID, Token, ReasonRunnerSystemFailure,
// ...) so that it does not hang until its timeout.
type PayloadError struct {
	ID    int64
	Token string
	Err   error
}

func (e *PayloadError) Error() string {
	if e.ID > 0 {
		return fmt.Sprintf("decoding job %d: %v", e.ID, e.Err)
	}
	return fmt.Sprintf("decoding job: %v", e.Err)
}

func (e *PayloadError) Unwrap() error { return e.Err }

func validUTF8(b []byte) bool { return utf8.Valid(b) }
