package gitlab

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
)

const runnerToken = "glrt-test-runner"

func newRunnerFake(t *testing.T) *fakegitlab.Server {
	fake := fakegitlab.New(t)
	fake.AddRunner(runnerToken)
	return fake
}

type requestBody struct {
	Token      string          `json:"token"`
	SystemID   string          `json:"system_id"`
	LastUpdate string          `json:"last_update"`
	Info       json.RawMessage `json:"info"`
}

func jobRequests(t *testing.T, fake *fakegitlab.Server) []requestBody {
	t.Helper()
	var out []requestBody
	for _, r := range fake.RequestsTo("POST", "/api/v4/jobs/request") {
		var b requestBody
		if err := json.Unmarshal(r.Body, &b); err != nil {
			t.Fatalf("job request body %q: %v", r.Body, err)
		}
		out = append(out, b)
	}
	return out
}

func TestRequestJobEchoesLastUpdate(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	ctx := testCtx(t)
	for i := 0; i < 2; i++ {
		j, err := c.RequestJob(ctx, runnerToken, "s_0123456789ab")
		if j != nil || err != nil {
			t.Fatalf("RequestJob() with an empty queue = %v, %v; want nil, nil", j, err)
		}
	}
	id := fake.Enqueue(fakegitlab.JobSpec{Script: []string{"make test"}})
	j, err := c.RequestJob(ctx, runnerToken, "s_0123456789ab")
	if err != nil || j == nil || j.ID != id {
		t.Fatalf("RequestJob() = %v, %v; want job %d", j, err, id)
	}
	reqs := jobRequests(t, fake)
	if reqs[0].LastUpdate != "" {
		t.Errorf("first request last_update = %q, want none", reqs[0].LastUpdate)
	}
	if reqs[1].LastUpdate == "" || reqs[2].LastUpdate != reqs[1].LastUpdate {
		t.Errorf("last_update of requests = %q, %q; want the server's value echoed", reqs[1].LastUpdate, reqs[2].LastUpdate)
	}
	if reqs[0].SystemID != "s_0123456789ab" || reqs[0].Token != runnerToken {
		t.Errorf("request = %+v, want token and system_id", reqs[0])
	}
}

func TestRequestJobAdvertisesFeatures(t *testing.T) {
	tests := []struct {
		name string
		opts []Option
		want Features
	}{
		{"default", nil, DefaultFeatures()},
		{"lead's choice", []Option{WithFeatures(Features{Variables: true, Image: true, Refspecs: true})}, Features{Variables: true, Image: true, Refspecs: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newRunnerFake(t)
			c, _ := newTestClient(t, fake, tc.opts...)
			if _, err := c.RequestJob(testCtx(t), runnerToken, ""); err != nil {
				t.Fatal(err)
			}
			var info VersionInfo
			if err := json.Unmarshal(jobRequests(t, fake)[0].Info, &info); err != nil {
				t.Fatal(err)
			}
			if info.Features != tc.want {
				t.Errorf("advertised features = %+v, want %+v", info.Features, tc.want)
			}
			if info.Name != "airlock" || info.Version != "1.2.3" || info.Executor == "" || info.Platform == "" {
				t.Errorf("info = %+v, want name, version, executor and platform", info)
			}
		})
	}
}

func TestRequestJobLongPoll(t *testing.T) {
	fake := newRunnerFake(t)
	fake.SetLongPoll(20 * time.Second)
	c, _ := newTestClient(t, fake)
	ctx := testCtx(t)
	// The first request carries no last_update: answered at once.
	if j, err := c.RequestJob(ctx, runnerToken, ""); j != nil || err != nil {
		t.Fatalf("RequestJob() = %v, %v; want nil, nil", j, err)
	}
	// The second echoes it and is held until a job arrives.
	done := make(chan *JobResponse, 1)
	go func() {
		j, err := c.RequestJob(ctx, runnerToken, "")
		if err != nil {
			t.Errorf("held RequestJob() = %v", err)
		}
		done <- j
	}()
	for len(fake.RequestsTo("POST", "/api/v4/jobs/request")) < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	id := fake.Enqueue(fakegitlab.JobSpec{})
	if j := <-done; j == nil || j.ID != id {
		t.Fatalf("held RequestJob() = %v, want job %d", j, id)
	}
}

func TestRequestJobStatuses(t *testing.T) {
	tests := []struct {
		name       string
		fault      fakegitlab.Fault
		token      string
		wantErr    error
		retryable  bool
		retryAfter time.Duration
	}{
		{name: "409 race", fault: fakegitlab.Fault{Status: 409}},
		{name: "403 token", token: "glrt-wrong", wantErr: ErrTokenInvalid},
		{name: "429", fault: fakegitlab.Fault{Status: 429, RetryAfter: "7"}, retryable: true, retryAfter: 7 * time.Second},
		{name: "502", fault: fakegitlab.Fault{Status: 502}, retryable: true},
		{name: "503 with huge Retry-After", fault: fakegitlab.Fault{Status: 503, RetryAfter: "99999999"}, retryable: true, retryAfter: 15 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newRunnerFake(t)
			id := fake.Enqueue(fakegitlab.JobSpec{})
			if tc.fault.Status != 0 {
				tc.fault.Path = "/api/v4/jobs/request"
				fake.InjectFault(tc.fault)
			}
			token := runnerToken
			if tc.token != "" {
				token = tc.token
			}
			c, _ := newTestClient(t, fake)
			j, err := c.RequestJob(testCtx(t), token, "")
			if j != nil {
				t.Fatalf("RequestJob() = job %d, want none", j.ID)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("RequestJob() error = %v, want %v", err, tc.wantErr)
			}
			if IsRetryable(err) != tc.retryable {
				t.Fatalf("IsRetryable(%v) = %v, want %v", err, IsRetryable(err), tc.retryable)
			}
			var ae *APIError
			if tc.retryAfter > 0 && (!errors.As(err, &ae) || ae.RetryAfter != tc.retryAfter) {
				t.Errorf("RequestJob() error = %v, want RetryAfter %s", err, tc.retryAfter)
			}
			if tc.wantErr == nil && !tc.retryable && err != nil {
				t.Fatalf("RequestJob() = %v, want nil, nil", err)
			}
			if tc.token == "" {
				// The job is still queued: the next request gets it.
				if j, err := c.RequestJob(testCtx(t), token, ""); err != nil || j == nil || j.ID != id {
					t.Errorf("next RequestJob() = %v, %v; want job %d", j, err, id)
				}
			}
		})
	}
}

func TestMalformedJobIsFailed(t *testing.T) {
	fake := newRunnerFake(t)
	id := fake.Enqueue(fakegitlab.JobSpec{Payload: func(id fakegitlab.JobID, token string) []byte {
		return []byte(fmt.Sprintf(`{"id": %d, "token": %q, "steps": "not a list", "variables": [{"key": "A", "value": "secret-value-1234", "masked": true}]}`, id, token))
	}})
	c, _ := newTestClient(t, fake)
	ctx := testCtx(t)
	_, err := c.RequestJob(ctx, runnerToken, "")
	var pe *PayloadError
	if !errors.As(err, &pe) || pe.ID != id || pe.Token == "" {
		t.Fatalf("RequestJob() error = %v, want a *PayloadError for job %d with its token", err, id)
	}
	if !strings.Contains(err.Error(), "steps") || strings.Contains(err.Error(), "secret-value") {
		t.Errorf("error %q should name the field and never a value", err)
	}
	if err := c.FailJob(ctx, pe.ID, pe.Token, ReasonRunnerSystemFailure, "airlock: "+err.Error()); err != nil {
		t.Fatalf("FailJob() = %v", err)
	}
	st, err := fake.WaitFinished(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.Reported != "failed" || st.FailureReason != "runner_system_failure" {
		t.Errorf("job state = %s/%s, want failed/runner_system_failure", st.Reported, st.FailureReason)
	}
	if tr := string(fake.Trace(id)); !strings.Contains(tr, "steps") {
		t.Errorf("trace = %q, want the error message", tr)
	}
}
