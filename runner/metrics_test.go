package runner

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
)

// scrapeMetrics serves m on a loopback port and returns one scrape of
// /metrics.
func scrapeMetrics(t *testing.T, m *Metrics) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- ServeMetrics(ctx, "127.0.0.1:0", m, nil, func(a net.Addr) { addrc <- a }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeMetrics() = %v", err)
		}
	}()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("ServeMetrics() = %v", err)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping metrics: %s, %v", resp.Status, err)
	}
	return string(b)
}

func TestMetricsExposition(t *testing.T) {
	m := NewMetrics()
	m.SetConcurrent(4)
	j := &job.Job{ID: "1"}
	for _, r := range []*Result{
		{State: Success, Duration: 2 * time.Second},
		{State: Failed, Reason: ScriptFailure, ExitCode: 1, Duration: 40 * time.Second},
		{State: Failed, Reason: ScriptFailure, Duration: time.Second},
		{State: Canceled, Duration: time.Second},
	} {
		m.JobStarted(j)
		m.StepStarted(j, "script")
		m.StepFinished(j, StepResult{Name: "script"})
		m.JobFinished(j, r)
	}
	m.JobStarted(j) // still running
	m.JobRejected("runner_system_failure")
	m.APIRequest("POST", "/jobs/request", 201)
	m.APIRequest("POST", "/jobs/request", 204)
	m.APIRequest("POST", "/jobs/request", 204)
	m.APIRequest("PATCH", "/jobs/:id/trace", 0)
	m.EgressDenied()
	m.EgressDenied()
	m.egressEvent(netpolicy.Event{Kind: netpolicy.KindDropped, Dropped: map[string]int64{"dns": 7, "http": 1}})
	m.LeakFound(true, "block")
	m.LeakFound(false, "warn")
	m.CredentialMinted("vault")
	m.CredentialRevoked("vault")
	m.CredentialRevokeFailed("githubapp")
	var none *Metrics // every method is safe on nil
	none.EgressDenied()
	none.JobFinished(j, &Result{State: Success})

	out := scrapeMetrics(t, m)
	tests := []string{
		`airlock_jobs_total{failure_reason="",state="success"} 1`,
		`airlock_jobs_total{failure_reason="script_failure",state="failed"} 2`,
		`airlock_jobs_total{failure_reason="",state="canceled"} 1`,
		`airlock_jobs_total{failure_reason="runner_system_failure",state="failed"} 1`,
		`airlock_jobs_running 1`,
		`airlock_job_duration_seconds_count 4`,
		`airlock_job_duration_seconds_bucket{le="5"} 3`,
		`airlock_api_requests_total{coordinator="",endpoint="/jobs/request",method="POST",status="201"} 1`,
		`airlock_api_requests_total{coordinator="",endpoint="/jobs/request",method="POST",status="204"} 2`,
		`airlock_api_requests_total{coordinator="",endpoint="/jobs/:id/trace",method="PATCH",status="error"} 1`,
		`airlock_egress_denied_total 2`,
		`airlock_gateway_events_dropped_total{kind="dns"} 7`,
		`airlock_gateway_events_dropped_total{kind="http"} 1`,
		`airlock_leaks_found_total{kind="stored",mode="block"} 1`,
		`airlock_leaks_found_total{kind="rule",mode="warn"} 1`,
		`airlock_credentials_minted_total{backend="vault"} 1`,
		`airlock_credentials_revoked_total{backend="vault"} 1`,
		`airlock_credential_revoke_failures_total{backend="githubapp"} 1`,
		`airlock_concurrent 4`,
		`go_goroutines `,
	}
	for _, want := range tests {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestServeMetricsRefusesBusyAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = ServeMetrics(context.Background(), ln.Addr().String(), NewMetrics(), nil, nil)
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Errorf("ServeMetrics(busy address) = %v, want a listen error", err)
	}
}
