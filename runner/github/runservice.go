package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/internal/backoff"
)

func decodeJSON(s string, out any) error {
	return json.Unmarshal([]byte(strings.TrimPrefix(s, "\ufeff")), out)
}

// jobRequest is the body of a RunnerJobRequest: only a reference (§3, §4).
type jobRequest struct {
	ID                string `json:"id"`
	RunnerRequestID   string `json:"runner_request_id"`
	RunServiceURL     string `json:"run_service_url"`
	ShouldAcknowledge bool   `json:"should_acknowledge"`
	BillingOwnerID    string `json:"billing_owner_id"`
}

// jobCancellation is the body of a JobCancellation.
type jobCancellation struct {
	JobID   string `json:"jobId"`
	Timeout string `json:"timeout"`
}

// envelope is the part of the job message (§5) the protocol needs: ids,
// the job token and the service URLs. The workflow half reads the rest.
type envelope struct {
	Plan struct {
		PlanID string `json:"planId"`
	} `json:"plan"`
	JobID          string `json:"jobId"`
	JobDisplayName string `json:"jobDisplayName"`
	RequestID      int64  `json:"requestId"`
	Resources      struct {
		Endpoints []struct {
			Name          string `json:"name"`
			URL           string `json:"url"`
			Authorization struct {
				Parameters map[string]string `json:"parameters"`
			} `json:"authorization"`
			Data map[string]string `json:"data"`
		} `json:"endpoints"`
	} `json:"resources"`
	Variables map[string]struct {
		Value    string `json:"value"`
		IsSecret bool   `json:"isSecret"`
	} `json:"variables"`
	Mask []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"mask"`
	Steps []struct {
		ID          string          `json:"id"`
		Name        string          `json:"name"`
		ContextName string          `json:"contextName"`
		DisplayName json.RawMessage `json:"displayNameToken"`
	} `json:"steps"`
}

// jobInfo is what the host keeps of an acquired job: enough to renew the
// lock, report and upload logs, also after a crash (it is the journal
// record, sealed by the agent).
type jobInfo struct {
	Coordinator   string   `json:"coordinator"`
	PlanID        string   `json:"plan_id"`
	JobID         string   `json:"job_id"`
	RequestID     string   `json:"request_id"`
	Name          string   `json:"name"`
	RunServiceURL string   `json:"run_service_url"` // SystemVssConnection url
	ResultsURL    string   `json:"results_url"`
	FeedURL       string   `json:"feed_url,omitempty"`
	Token         string   `json:"token"` // the job token
	Secrets       []string `json:"-"`     // values to mask (job token, GITHUB_TOKEN, secret variables)
	StepIDs       []string `json:"step_ids,omitempty"`
	StepNames     []string `json:"step_names,omitempty"`
	Billing       string   `json:"billing_owner_id,omitempty"`
}

func parseEnvelope(raw []byte, runServiceURL string) (*jobInfo, error) {
	var e envelope
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("decoding job message: %w", err)
	}
	info := &jobInfo{PlanID: e.Plan.PlanID, JobID: e.JobID, Name: e.JobDisplayName, RunServiceURL: runServiceURL}
	for _, ep := range e.Resources.Endpoints {
		if !strings.EqualFold(ep.Name, "SystemVssConnection") {
			continue
		}
		if ep.URL != "" {
			info.RunServiceURL = ep.URL
		}
		for k, v := range ep.Authorization.Parameters {
			if strings.EqualFold(k, "AccessToken") {
				info.Token = v
			}
		}
		for k, v := range ep.Data {
			switch strings.ToLower(k) {
			case "feedstreamurl":
				info.FeedURL = v
			case "resultsserviceurl":
				if info.ResultsURL == "" {
					info.ResultsURL = v
				}
			}
		}
	}
	for k, v := range e.Variables {
		if strings.EqualFold(k, "system.github.results_endpoint") && v.Value != "" {
			info.ResultsURL = v.Value
		}
		if v.IsSecret && v.Value != "" {
			info.Secrets = append(info.Secrets, v.Value)
		}
	}
	for _, m := range e.Mask {
		if m.Value != "" && strings.EqualFold(m.Type, "regex") && !strings.ContainsAny(m.Value, `\^$.|?*+()[]{}`) {
			info.Secrets = append(info.Secrets, m.Value)
		}
	}
	if info.Token != "" {
		info.Secrets = append(info.Secrets, info.Token)
	}
	for _, s := range e.Steps {
		info.StepIDs = append(info.StepIDs, s.ID)
		name := s.ContextName
		var dn string
		if json.Unmarshal(s.DisplayName, &dn) == nil && dn != "" {
			name = dn
		}
		info.StepNames = append(info.StepNames, firstNonEmpty(name, s.Name))
	}
	var errs []error
	if info.PlanID == "" || info.JobID == "" {
		errs = append(errs, errors.New("plan or job id is missing"))
	}
	if info.Token == "" {
		errs = append(errs, errors.New("the SystemVssConnection endpoint has no access token"))
	}
	if info.RunServiceURL == "" {
		errs = append(errs, errors.New("no run service URL"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("decoding job message: %w", err)
	}
	return info, nil
}

// acquireJob fetches the job message a RunnerJobRequest refers to, with the
// runner's token (§4, fact 3).
func acquireJob(ctx context.Context, ts *tokenSource, hc *http.Client, jr jobRequest) ([]byte, error) {
	target, err := resolve(jr.RunServiceURL, "acquirejob")
	if err != nil {
		return nil, fmt.Errorf("acquiring job: %w", err)
	}
	var raw json.RawMessage
	got, err := ts.do(ctx, hc, request{op: "acquiring job", method: http.MethodPost, url: target, body: map[string]string{
		"jobMessageId": jr.RunnerRequestID, "runnerOS": "Linux", "billingOwnerId": jr.BillingOwnerID,
	}}, &raw)
	if err != nil {
		return nil, err
	}
	if !got {
		return nil, errors.New("acquiring job: empty answer")
	}
	return raw, nil
}

// jobClient speaks for one job with the job token: run service and results.
type jobClient struct {
	info *jobInfo
	hc   *http.Client
}

func (c *jobClient) auth() string { return "Bearer " + c.info.Token }

// renew extends the job's lock and returns until when it holds.
func (c *jobClient) renew(ctx context.Context) (time.Time, error) {
	target, err := resolve(c.info.RunServiceURL, "renewjob")
	if err != nil {
		return time.Time{}, fmt.Errorf("renewing job lock: %w", err)
	}
	var ans struct {
		LockedUntil string `json:"lockedUntil"`
	}
	if _, err := do(ctx, c.hc, request{op: "renewing job lock", method: http.MethodPost, url: target, auth: c.auth(),
		body: map[string]string{"planId": c.info.PlanID, "jobId": c.info.JobID}}, &ans); err != nil {
		return time.Time{}, err
	}
	return parseLockedUntil(ans.LockedUntil, time.Now()), nil
}

// parseLockedUntil reads the lock's end as .NET writes it (with or without
// a zone, fractions of any length); what it cannot read counts as the
// shortest lock GitHub grants from now.
func parseLockedUntil(s string, now time.Time) time.Time {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.9999999", "2006-01-02T15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil && t.After(now.Add(-24*time.Hour)) {
			return t
		}
	}
	return now.Add(5 * time.Minute)
}

// Conclusions completejob accepts.
const (
	conclusionSucceeded = "succeeded"
	conclusionFailed    = "failed"
	conclusionCanceled  = "canceled"
	conclusionAbandoned = "abandoned"
)

// wireOutput is a job output for completejob.
type wireOutput struct {
	Value    string `json:"value"`
	IsSecret bool   `json:"isSecret"`
}

// wireAnnotation is a job annotation (::error and friends) for completejob.
type wireAnnotation struct {
	Level       string `json:"level"` // FAILURE, WARNING, NOTICE
	Message     string `json:"message"`
	Title       string `json:"title,omitempty"`
	Path        string `json:"path,omitempty"`
	StartLine   int    `json:"startLine,omitempty"`
	EndLine     int    `json:"endLine,omitempty"`
	StartColumn int    `json:"startColumn,omitempty"`
	EndColumn   int    `json:"endColumn,omitempty"`
	StepNumber  int    `json:"stepNumber,omitempty"`
}

type stepResult struct {
	ExternalID      string           `json:"external_id"`
	Number          int              `json:"number"`
	Name            string           `json:"name"`
	Status          string           `json:"status"`
	Conclusion      string           `json:"conclusion"`
	StartedAt       string           `json:"started_at,omitempty"`
	CompletedAt     string           `json:"completed_at,omitempty"`
	CompletedLogURL string           `json:"completed_log_url,omitempty"`
	LogLines        int              `json:"completed_log_lines,omitempty"`
	Annotations     []wireAnnotation `json:"annotations"`
}

type completeRequest struct {
	PlanID         string                `json:"planId"`
	JobID          string                `json:"jobId"`
	Conclusion     string                `json:"conclusion"`
	Outputs        map[string]wireOutput `json:"outputs"`
	StepResults    []stepResult          `json:"stepResults"`
	Annotations    []wireAnnotation      `json:"annotations"`
	BillingOwnerID string                `json:"billingOwnerId,omitempty"`
}

// complete reports the job's end (§4): up to five tries, 401 and 404 final.
func (c *jobClient) complete(ctx context.Context, req completeRequest, retryWait time.Duration) error {
	target, err := resolve(c.info.RunServiceURL, "completejob")
	if err != nil {
		return fmt.Errorf("completing job: %w", err)
	}
	req.PlanID, req.JobID, req.BillingOwnerID = c.info.PlanID, c.info.JobID, c.info.Billing
	for attempt := 1; ; attempt++ {
		_, err = do(ctx, c.hc, request{op: "completing job", method: http.MethodPost, url: target, auth: c.auth(), body: req}, nil)
		st := StatusOf(err)
		if err == nil || st == http.StatusUnauthorized || st == http.StatusNotFound || attempt == 5 {
			return err
		}
		if st >= 400 && st < 500 && st != http.StatusTooManyRequests && st != http.StatusRequestTimeout {
			return err
		}
		if !sleepFor(ctx, retryWait) {
			return errors.Join(err, ctx.Err())
		}
	}
}

// sleepFor is backoff.Sleep as a condition: true when d passed, false
// when ctx ended first.
func sleepFor(ctx context.Context, d time.Duration) bool { return backoff.Sleep(ctx, d) == nil }
