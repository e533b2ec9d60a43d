package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
)

// Metrics are the agent's Prometheus metrics. It is a Hook (add it to
// Runner.Hooks) for job counts and durations; the agent feeds the API
// request statuses (APIRequest is a gitlab.RequestObserver) and the
// sandbox and broker feed the egress and credential counters. Every
// method is safe for concurrent use and does nothing on a nil *Metrics.
type Metrics struct {
	reg *prometheus.Registry

	jobs         *prometheus.CounterVec
	running      prometheus.Gauge
	duration     prometheus.Histogram
	api          *prometheus.CounterVec
	egressDenied prometheus.Counter
	dropped      *prometheus.CounterVec
	leaks        *prometheus.CounterVec
	minted       *prometheus.CounterVec
	revoked      *prometheus.CounterVec
	revokeFailed *prometheus.CounterVec
	concurrent   prometheus.Gauge

	poolClaims  *prometheus.CounterVec
	poolReady   *prometheus.GaugeVec
	poolRetired *prometheus.CounterVec
	poolDead    *prometheus.CounterVec
	poolClaim   prometheus.Histogram
}

var _ Hook = (*Metrics)(nil)

// NewMetrics returns the metrics on a registry of their own (with the Go
// runtime and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_jobs_total",
			Help: "Jobs that ended, by final state and failure reason (GitLab's vocabulary, plus unauthorized: an ungranted declaration).",
		}, []string{"state", "failure_reason"}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "airlock_jobs_running",
			Help: "Jobs running now.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "airlock_job_duration_seconds",
			Help:    "How long jobs ran, from acceptance to teardown.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200},
		}),
		api: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_api_requests_total",
			Help: "Requests to coordinator APIs, by coordinator ([[runners]] name), endpoint, method and HTTP status (\"error\": no response).",
		}, []string{"coordinator", "endpoint", "method", "status"}),
		egressDenied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "airlock_egress_denied_total",
			Help: "Egress attempts of jobs the policy denied (DNS, proxy, firewall).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_gateway_events_dropped_total",
			Help: "Gateway decisions recorded in a job's trail only as a count (events_dropped record), by event kind.",
		}, []string{"kind"}),
		leaks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_leaks_found_total",
			Help: "Credentials the leak scan found in jobs' changes, by kind (rule: a gitleaks rule; stored: a stored secret's value) and mode (block, warn).",
		}, []string{"kind", "mode"}),
		minted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_credentials_minted_total",
			Help: "Credentials minted for jobs, by backend.",
		}, []string{"backend"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_credentials_revoked_total",
			Help: "Credentials revoked after their job, by backend.",
		}, []string{"backend"}),
		revokeFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_credential_revoke_failures_total",
			Help: "Failed revocation attempts (retried by the sweeper), by backend.",
		}, []string{"backend"}),
		concurrent: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "airlock_concurrent",
			Help: "The configured global job limit (concurrent).",
		}),
		// Pool metrics are labelled only by the images the pool keeps: those
		// an admin listed ([pool]) and the recent ones it counts (Pool.note).
		poolClaims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_pool_claims_total",
			Help: "Jobs of a pooled image that looked for a warm sandbox, by image and result (hit: claimed one; miss: none was ready, the job ran cold).",
		}, []string{"image", "result"}),
		poolReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "airlock_pool_ready",
			Help: "Warm sandboxes ready now, by image.",
		}, []string{"image"}),
		poolRetired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_pool_retired_total",
			Help: "Warm sandboxes removed unclaimed because their image's name came to name another image (or none), by image.",
		}, []string{"image"}),
		poolDead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_pool_dead_total",
			Help: "Warm sandboxes found dead before a claim (their container or network holder had stopped) and removed, by image.",
		}, []string{"image"}),
		poolClaim: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "airlock_pool_claim_seconds",
			Help:    "From a job claiming a warm sandbox to the sandbox ready for its first step (credentials delivered, policy registered, sources copied).",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
		}),
	}
	m.reg.MustRegister(m.jobs, m.running, m.duration, m.api, m.egressDenied, m.dropped, m.leaks, m.minted, m.revoked,
		m.revokeFailed, m.concurrent, m.poolClaims, m.poolReady, m.poolRetired, m.poolDead, m.poolClaim,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry the metrics live on (to add more collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// JobStarted implements Hook.
func (m *Metrics) JobStarted(*job.Job) {
	if m != nil {
		m.running.Inc()
	}
}

// StepStarted implements Hook.
func (m *Metrics) StepStarted(*job.Job, string) {}

// StepFinished implements Hook.
func (m *Metrics) StepFinished(*job.Job, StepResult) {}

// JobFinished implements Hook.
func (m *Metrics) JobFinished(_ *job.Job, r *Result) {
	if m == nil {
		return
	}
	m.running.Dec()
	m.duration.Observe(r.Duration.Seconds())
	m.jobEnded(string(r.State), string(r.Reason))
}

// JobRejected counts a job the agent failed before it reached the runner
// (a malformed payload), with reason.
func (m *Metrics) JobRejected(reason string) {
	if m != nil {
		m.jobEnded(string(Failed), reason)
	}
}

func (m *Metrics) jobEnded(state, reason string) {
	if state != string(Failed) {
		reason = ""
	}
	m.jobs.WithLabelValues(state, reason).Inc()
}

// APIRequest counts one API request of no named coordinator; it has the
// shape of gitlab.RequestObserver. status 0 means no response arrived.
func (m *Metrics) APIRequest(method, endpoint string, status int) {
	m.apiRequest("", method, endpoint, status)
}

// CoordinatorRequests returns the request observer (the shape of
// gitlab.RequestObserver) of one coordinator: its requests are counted
// with coordinator=name.
func (m *Metrics) CoordinatorRequests(name string) func(method, endpoint string, status int) {
	return func(method, endpoint string, status int) { m.apiRequest(name, method, endpoint, status) }
}

func (m *Metrics) apiRequest(coordinator, method, endpoint string, status int) {
	if m == nil {
		return
	}
	s := "error"
	if status > 0 {
		s = strconv.Itoa(status)
	}
	m.api.WithLabelValues(coordinator, endpoint, method, s).Inc()
}

// SetConcurrent records the configured global job limit.
func (m *Metrics) SetConcurrent(n int) {
	if m != nil {
		m.concurrent.Set(float64(n))
	}
}

// EgressDenied counts one denied egress attempt.
func (m *Metrics) EgressDenied() {
	if m != nil {
		m.egressDenied.Inc()
	}
}

// EventsDropped counts gateway events of kind that reached the trail only
// as a count.
func (m *Metrics) EventsDropped(kind string, n int64) {
	if m != nil {
		m.dropped.WithLabelValues(kind).Add(float64(n))
	}
}

// LeakFound counts a finding of the leak scan.
func (m *Metrics) LeakFound(stored bool, mode string) {
	if m != nil {
		kind := "rule"
		if stored {
			kind = "stored"
		}
		m.leaks.WithLabelValues(kind, mode).Inc()
	}
}

// CredentialMinted counts a credential minted by backend.
func (m *Metrics) CredentialMinted(backend string) {
	if m != nil {
		m.minted.WithLabelValues(backend).Inc()
	}
}

// CredentialRevoked counts a credential revoked by backend.
func (m *Metrics) CredentialRevoked(backend string) {
	if m != nil {
		m.revoked.WithLabelValues(backend).Inc()
	}
}

// CredentialRevokeFailed counts a failed revocation attempt by backend.
func (m *Metrics) CredentialRevokeFailed(backend string) {
	if m != nil {
		m.revokeFailed.WithLabelValues(backend).Inc()
	}
}

// PoolClaim counts a job of a pooled image claiming a warm sandbox (hit)
// or finding none ready.
func (m *Metrics) PoolClaim(image string, hit bool) {
	if m != nil {
		result := "miss"
		if hit {
			result = "hit"
		}
		m.poolClaims.WithLabelValues(image, result).Inc()
	}
}

// PoolReady records the warm sandboxes of image ready now.
func (m *Metrics) PoolReady(image string, n int) {
	if m != nil {
		m.poolReady.WithLabelValues(image).Set(float64(n))
	}
}

// PoolRetired counts n warm sandboxes of image retired unclaimed.
func (m *Metrics) PoolRetired(image string, n int) {
	if m != nil {
		m.poolRetired.WithLabelValues(image).Add(float64(n))
	}
}

// PoolDead counts n warm sandboxes of image found dead unclaimed.
func (m *Metrics) PoolDead(image string, n int) {
	if m != nil {
		m.poolDead.WithLabelValues(image).Add(float64(n))
	}
}

// PoolClaimed records how long a claimed warm sandbox took to be ready
// for its job's first step.
func (m *Metrics) PoolClaimed(d time.Duration) {
	if m != nil {
		m.poolClaim.Observe(d.Seconds())
	}
}

// ServeMetrics serves m on addr at /metrics until ctx ends. It returns
// once the listener is closed; a failure to listen is returned at once.
// ready, if not nil, receives the bound address (useful with port 0).
func ServeMetrics(ctx context.Context, addr string, m *Metrics, log hclog.Logger, ready func(net.Addr)) error {
	return ServeMetricsWith(ctx, addr, m, log, ready, nil)
}

// ServeMetricsWith is ServeMetrics that also serves handlers at their
// paths (the autoscalers' webhooks).
func ServeMetricsWith(ctx context.Context, addr string, m *Metrics, log hclog.Logger, ready func(net.Addr), handlers map[string]http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	if ready != nil {
		ready(ln.Addr())
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	for path, h := range handlers {
		mux.Handle(path, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && log != nil {
			log.Warn("stopping metrics server", "error", err)
		}
	})
	defer stop()
	if log != nil {
		log.Info("serving metrics", "address", ln.Addr().String(), "path", "/metrics")
	}
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving metrics: %w", err)
	}
	return nil
}

// egressEvent counts a gateway decision.
func (m *Metrics) egressEvent(e netpolicy.Event) {
	if e.Kind == netpolicy.KindDropped {
		for kind, n := range e.Dropped {
			m.EventsDropped(kind, n)
		}
		return
	}
	if e.Verdict == netpolicy.VerdictDenied {
		m.EgressDenied()
	}
}

// credentialEvent counts a broker event.
func (m *Metrics) credentialEvent(e secrets.Event) {
	switch e.Type {
	case secrets.EventMinted:
		m.CredentialMinted(e.Backend)
	case secrets.EventRevoked:
		m.CredentialRevoked(e.Backend)
	case secrets.EventRevokeFailed:
		m.CredentialRevokeFailed(e.Backend)
	}
}
