package gitlab

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
)

func TestFinishAcceptedThenDone(t *testing.T) {
	fake := newRunnerFake(t)
	fake.SetTraceUpdateInterval(4)
	c, sl := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	fake.RespondAccepted(j.ID, 2)
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{})
	data := logLines(5000)
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Finish(testCtx(t), FinalState{State: StateSuccess}); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	if n := len(fake.RequestsTo("PUT", fmt.Sprintf("/api/v4/jobs/%d", j.ID))); n != 3 {
		t.Errorf("final updates = %d, want 3 (202, 202, 200)", n)
	}
	if w := sl.all(); len(w) != 2 || w[0] != 4*time.Second || w[1] != 4*time.Second {
		t.Errorf("waits = %v, want two waits of the server's 4s interval", w)
	}
	checkTrace(t, fake, j.ID, data)
}

func TestFinishResendsTraceOn412(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	ctx := testCtx(t)
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{})
	data := logLines(1_500_000)
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	fake.CorruptTrace(j.ID)
	if err := tw.Finish(ctx, FinalState{State: StateFailed, FailureReason: ReasonScriptFailure, ExitCode: 3}); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	var fromZero int
	for _, r := range fake.RequestsTo("PATCH", fmt.Sprintf("/api/v4/jobs/%d/trace", j.ID)) {
		if r.Header.Get("Content-Range") == fmt.Sprintf("0-%d", 1<<20-1) {
			fromZero++
		}
	}
	if fromZero != 2 {
		t.Errorf("PATCHes from byte 0 = %d, want 2 (first send and resend after 412)", fromZero)
	}
	checkTrace(t, fake, j.ID, data)
	st := fake.Job(j.ID)
	if st.Reported != "failed" || st.FailureReason != "script_failure" || st.ExitCode == nil || *st.ExitCode != 3 {
		t.Errorf("final state = %s/%s/%v, want failed/script_failure/3", st.Reported, st.FailureReason, st.ExitCode)
	}
}

func TestFinishJobGone(t *testing.T) {
	tests := []struct {
		name  string
		setup func(fake *fakegitlab.Server, id int64)
		token string
	}{
		{name: "canceled on the server", setup: func(fake *fakegitlab.Server, id int64) { fake.ForceCancel(id) }},
		{name: "wrong job token (403)", token: "glcbt-wrong"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newRunnerFake(t)
			c, sl := newTestClient(t, fake)
			j := startJob(t, fake, c, fakegitlab.JobSpec{})
			if tc.setup != nil {
				tc.setup(fake, j.ID)
			}
			token := j.Token
			if tc.token != "" {
				token = tc.token
			}
			tw := c.NewTraceWriter(j.ID, token, TraceOptions{})
			if _, err := tw.Write([]byte("output\n")); err != nil {
				t.Fatal(err)
			}
			if err := tw.Finish(testCtx(t), FinalState{State: StateSuccess}); !errors.Is(err, ErrJobGone) {
				t.Fatalf("Finish() = %v, want ErrJobGone", err)
			}
			if w := sl.all(); len(w) != 0 {
				t.Errorf("waits = %v, want none: a gone job is not retried", w)
			}
		})
	}
}

func TestFinishRetriesServerErrors(t *testing.T) {
	fake := newRunnerFake(t)
	c, sl := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	fake.InjectFault(fakegitlab.Fault{Method: "PUT", Path: fmt.Sprintf("/api/v4/jobs/%d", j.ID), Status: 502, Count: 4})
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{})
	if err := tw.Finish(testCtx(t), FinalState{State: StateSuccess}); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	if w := sl.all(); len(w) != 4 {
		t.Errorf("waits = %v, want 4 back-offs", w)
	}
	if st := fake.Job(j.ID); st.Reported != "success" {
		t.Errorf("reported = %q, want success", st.Reported)
	}

	// A storm longer than the retry budget gives up with an error.
	j2 := startJob(t, fake, c, fakegitlab.JobSpec{})
	fake.InjectFault(fakegitlab.Fault{Method: "PUT", Path: fmt.Sprintf("/api/v4/jobs/%d", j2.ID), Status: 503, Count: 100})
	tw2 := c.NewTraceWriter(j2.ID, j2.Token, TraceOptions{})
	if err := tw2.Finish(testCtx(t), FinalState{State: StateSuccess}); err == nil {
		t.Fatal("Finish() in an endless 503 storm = nil, want an error")
	}
	if n := len(fake.RequestsTo("PUT", fmt.Sprintf("/api/v4/jobs/%d", j2.ID))); n != maxFinalAttempts {
		t.Errorf("final updates = %d, want %d", n, maxFinalAttempts)
	}
}

func TestFailureReasonMapping(t *testing.T) {
	accepted := []string{"script_failure", "image_pull_failure"}
	tests := []struct {
		in   FailureReason
		want FailureReason
	}{
		{ReasonScriptFailure, ReasonScriptFailure},
		{ReasonRunnerSystemFailure, ReasonRunnerSystemFailure},
		{ReasonJobExecutionTimeout, ReasonJobExecutionTimeout},
		{ReasonImagePullFailure, ReasonImagePullFailure},
		{ReasonRunnerConfigurationError, ReasonUnknownFailure},
		{"made_up", ReasonUnknownFailure},
		{"", ReasonUnknownFailure},
	}
	for _, tc := range tests {
		if got := AllowedFailureReason(tc.in, accepted); got != tc.want {
			t.Errorf("AllowedFailureReason(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}

	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{FailureReasons: []string{"script_failure"}})
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{FailureReasons: j.Features.FailureReasons})
	if err := tw.Finish(testCtx(t), FinalState{State: StateFailed, FailureReason: ReasonImagePullFailure}); err != nil {
		t.Fatal(err)
	}
	if st := fake.Job(j.ID); st.FailureReason != "unknown_failure" || st.ExitCode != nil {
		t.Errorf("failure_reason = %q exit code %v, want unknown_failure and none", st.FailureReason, st.ExitCode)
	}
}

func TestFinishRejectsBadState(t *testing.T) {
	c, err := New("https://gitlab.test")
	if err != nil {
		t.Fatal(err)
	}
	tw := c.NewTraceWriter(1, "t", TraceOptions{})
	if err := tw.Finish(testCtx(t), FinalState{State: StateRunning}); err == nil {
		t.Error("Finish(running) = nil, want an error")
	}
}
