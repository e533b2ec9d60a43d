package github

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Results service step states and conclusions (§8: the official codes).
const (
	stepInProgress = 3
	stepPending    = 5
	stepCompleted  = 6

	conclSuccess   = 2
	conclFailure   = 3
	conclCancelled = 4
	conclSkipped   = 7
)

const (
	receiver    = "twirp/results.services.receiver.Receiver/"
	stepUpdater = "twirp/github.actions.results.api.v1.WorkflowStepUpdateService/WorkflowStepsUpdate"
	// blockSize is the largest append block sent at once.
	blockSize = 2 << 20
)

func resultsTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

type stepUpdate struct {
	ExternalID  string `json:"external_id"`
	Number      int    `json:"number"`
	Name        string `json:"name"`
	Status      int    `json:"status"`
	StartedAt   string `json:"started_at,omitempty"`
	CompletedAt string `json:"completed_at,omitempty"`
	Conclusion  int    `json:"conclusion,omitempty"`
}

func (c *jobClient) twirp(ctx context.Context, method string, body map[string]any, out any) error {
	if c.info.ResultsURL == "" {
		return errors.New("the job message names no results service")
	}
	target, err := resolve(c.info.ResultsURL, method)
	if err != nil {
		return err
	}
	body["workflow_run_backend_id"] = c.info.PlanID
	body["workflow_job_run_backend_id"] = c.info.JobID
	op := "calling results " + method[strings.LastIndex(method, "/")+1:]
	_, err = do(ctx, c.hc, request{op: op, method: http.MethodPost, url: target, auth: c.auth(), body: body}, out)
	return err
}

// updateSteps sends step states (change_order increases by one per call).
func (c *jobClient) updateSteps(ctx context.Context, order int, steps []stepUpdate) error {
	return c.twirp(ctx, stepUpdater, map[string]any{"steps": steps, "change_order": order}, nil)
}

type blobURL struct {
	SummaryURL  string `json:"summary_url"`
	LogsURL     string `json:"logs_url"`
	DiagURL     string `json:"diag_logs_url"`
	StorageType string `json:"blob_storage_type"`
	SoftLimit   int64  `json:"soft_size_limit"`
}

// uploadLog uploads one log (a step's when stepID is set, else the job's)
// as an append blob, then records its metadata (§8).
func (c *jobClient) uploadLog(ctx context.Context, stepID string, log []byte) error {
	kind, body := "Job", map[string]any{}
	if stepID != "" {
		kind, body["step_backend_id"] = "Step", stepID
	}
	var u blobURL
	if err := c.twirp(ctx, receiver+"Get"+kind+"LogsSignedBlobURL", body, &u); err != nil {
		return err
	}
	if u.LogsURL == "" {
		return fmt.Errorf("uploading %s log: no signed URL in the answer", strings.ToLower(kind))
	}
	if err := c.appendBlob(ctx, u.LogsURL, log); err != nil {
		return fmt.Errorf("uploading %s log: %w", strings.ToLower(kind), err)
	}
	meta := map[string]any{"uploaded_at": resultsTime(time.Now()), "line_count": lineCount(log)}
	if stepID != "" {
		meta["step_backend_id"] = stepID
	}
	var ok struct {
		OK bool `json:"ok"`
	}
	if err := c.twirp(ctx, receiver+"Create"+kind+"LogsMetadata", meta, &ok); err != nil {
		return err
	}
	if !ok.OK {
		return fmt.Errorf("uploading %s log: the results service refused the metadata", strings.ToLower(kind))
	}
	return nil
}

// uploadDiag uploads data (the sealed audit trail) as the job's diagnostic
// log, a block blob.
func (c *jobClient) uploadDiag(ctx context.Context, data []byte) error {
	var u blobURL
	if err := c.twirp(ctx, receiver+"GetJobDiagLogsSignedBlobURL", map[string]any{}, &u); err != nil {
		return err
	}
	if u.DiagURL == "" {
		return errors.New("uploading audit trail: no signed URL in the answer")
	}
	return c.putBlob(ctx, u.DiagURL, data, http.Header{"X-Ms-Blob-Type": {"BlockBlob"}})
}

// uploadSummary uploads a step's GITHUB_STEP_SUMMARY (markdown) as a
// block blob and records it (§8).
func (c *jobClient) uploadSummary(ctx context.Context, stepID string, markdown []byte) error {
	var u blobURL
	if err := c.twirp(ctx, receiver+"GetStepSummarySignedBlobURL", map[string]any{"step_backend_id": stepID}, &u); err != nil {
		return err
	}
	if u.SummaryURL == "" {
		return errors.New("uploading step summary: no signed URL in the answer")
	}
	if err := c.putBlob(ctx, u.SummaryURL, markdown, http.Header{"X-Ms-Blob-Type": {"BlockBlob"}}); err != nil {
		return fmt.Errorf("uploading step summary: %w", err)
	}
	var ok struct {
		OK bool `json:"ok"`
	}
	if err := c.twirp(ctx, receiver+"CreateStepSummaryMetadata", map[string]any{"step_backend_id": stepID,
		"size": len(markdown), "uploaded_at": resultsTime(time.Now())}, &ok); err != nil {
		return err
	}
	if !ok.OK {
		return errors.New("uploading step summary: the results service refused the metadata")
	}
	return nil
}

func lineCount(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	n := bytes.Count(b, []byte{'\n'})
	if b[len(b)-1] != '\n' {
		n++
	}
	return n
}

// appendBlob creates an append blob and appends data in blocks, sealing it
// with the last one. The signed URL carries its own query, so the
// operation is appended with '&' (fact 6). No Authorization header.
func (c *jobClient) appendBlob(ctx context.Context, signed string, data []byte) error {
	if err := c.putBlob(ctx, signed, nil, http.Header{"X-Ms-Blob-Type": {"AppendBlob"}}); err != nil {
		return err
	}
	sep := "&"
	if !strings.Contains(signed, "?") {
		sep = "?"
	}
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), blockSize)
		block := data[:n]
		data = data[n:]
		u := signed + sep + "comp=appendblock"
		h := http.Header{}
		if len(data) == 0 {
			u += "&seal=true"
			h.Set("X-Ms-Blob-Sealed", "true")
		}
		if err := c.putBlob(ctx, u, block, h); err != nil {
			return err
		}
	}
	return nil
}

func (c *jobClient) putBlob(ctx context.Context, u string, data []byte, h http.Header) error {
	if data == nil {
		data = []byte{}
	}
	_, err := do(ctx, c.hc, request{op: "writing blob", method: http.MethodPut, url: u, body: data, header: h}, nil)
	return err
}
