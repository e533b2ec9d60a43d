package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/github"
	"github.com/airlock-ci/airlock/runner/github/autoscale"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/githubapp"
)

// autoscalers makes one Autoscaler per [[autoscale]] entry, with its
// credentials read from the state store, and the webhook handlers to serve
// on listen_address.
// Each autoscaler's decisions also go to a signed audit trail of its own
// (see decisionTrail); stop seals them once the autoscalers have stopped.
func autoscalers(cfg *config.Config, r *runner.Runner, m *runner.Metrics, log hclog.Logger) (_ []*autoscale.Autoscaler, _ map[string]http.Handler, stop func(), err error) {
	var trails []*decisionTrail
	stop = func() {
		for _, t := range trails {
			t.stop()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	if len(cfg.Autoscale) == 0 {
		return nil, nil, stop, nil
	}
	st, err := secrets.Open(cfg.StateDir, secrets.OpenOptions{Shared: true, MustExist: true})
	if err != nil {
		return nil, nil, stop, err
	}
	defer st.Close()
	host, _ := os.Hostname()
	am := newAutoscaleMetrics(m.Registry())
	var out []*autoscale.Autoscaler
	hooks := map[string]http.Handler{}
	for i, e := range cfg.Autoscale {
		key := fmt.Sprintf("autoscale[%d]", i)
		scope, api, err := autoscale.ParseScope(e.URL)
		if err != nil {
			return nil, nil, stop, fmt.Errorf("%s.url: %w", key, err)
		}
		if e.APIURL != "" {
			api = e.APIURL
		}
		var auth autoscale.TokenSource
		switch {
		case e.AppSecret != "":
			sec, err := st.Secret(e.AppSecret)
			if err != nil {
				return nil, nil, stop, fmt.Errorf("%s.app_secret: %w", key, err)
			}
			if sec.Backend != "githubapp" {
				return nil, nil, stop, fmt.Errorf("%s.app_secret: secret %q is a %s secret, not a githubapp one (airlock secret set NAME --backend githubapp --param app_id=… --param installation_id=…)", key, sec.Name, sec.Backend)
			}
			be := githubapp.New(nil)
			auth = &autoscale.CachedToken{Mint: func(ctx context.Context) (string, time.Time, error) {
				return be.InstallationToken(ctx, sec, nil)
			}}
		default:
			sec, err := st.Secret(e.TokenSecret)
			if err != nil {
				return nil, nil, stop, fmt.Errorf("%s.token_secret: %w", key, err)
			}
			auth = autoscale.StaticToken(sec.Value)
		}
		var hookKey []byte
		if e.WebhookSecret != "" {
			sec, err := st.Secret(e.WebhookSecret)
			if err != nil {
				return nil, nil, stop, fmt.Errorf("%s.webhook_secret: %w", key, err)
			}
			hookKey = sec.Value
		}
		trail := newDecisionTrail(r.Audit, r.ID(), e.Name, log)
		trails = append(trails, trail)
		obs := m.CoordinatorRequests("autoscale:" + e.Name)
		hc := github.ObservedClient(&http.Client{Timeout: 10 * time.Minute}, obs)
		lg := log.Named("github").With("autoscale", e.Name)
		a, err := autoscale.New(autoscale.Config{
			Name: e.Name, Scope: scope, API: api, Auth: auth,
			RunnerGroupID: e.RunnerGroupID, Labels: e.Labels, MaxRunners: e.MaxRunners,
			WebhookSecret: hookKey, Repositories: e.Repositories, AllowForks: e.AllowForks,
			PollInterval: e.PollInterval, IdleTimeout: e.IdleTimeout, ReconcileInterval: e.ReconcileInterval,
			Host: host, StateDir: cfg.StateDir,
			Factory: github.JITFactory{Convert: github.MessageConverter(cfg.DefaultImage(), "airlock-"+e.Name, hc, lg),
				HTTPClient: hc, Observer: obs, Logger: lg},
			Events: decisions(am.observe(e.Name), trail.observe),
			Logger: log,
		})
		if err != nil {
			return nil, nil, stop, err
		}
		out = append(out, a)
		if e.WebhookSecret != "" {
			hooks[e.Path()] = a
		}
	}
	return out, hooks, stop, nil
}

// decisions hands each autoscaler event to every observer.
func decisions(observers ...func(autoscale.Event)) func(autoscale.Event) {
	return func(e autoscale.Event) {
		for _, o := range observers {
			o(e)
		}
	}
}

// autoscaleMetrics count what the autoscalers decide.
type autoscaleMetrics struct {
	events *prometheus.CounterVec
	wait   *prometheus.HistogramVec
}

func newAutoscaleMetrics(reg prometheus.Registerer) *autoscaleMetrics {
	m := &autoscaleMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "airlock_autoscale_events_total",
			Help: "Autoscaler decisions: job_queued, job_refused, job_started, runner_created, runner_deleted, runner_stuck, delivery_refused, delivery_duplicate, provisioning_failed."},
			[]string{"autoscale", "type"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "airlock_autoscale_queue_wait_seconds",
			Help: "Time from a job being seen queued to its JIT runner getting a job.", Buckets: prometheus.ExponentialBuckets(0.5, 2, 12)},
			[]string{"autoscale"}),
	}
	reg.MustRegister(m.events, m.wait)
	return m
}

func (m *autoscaleMetrics) observe(name string) func(autoscale.Event) {
	return func(e autoscale.Event) {
		m.events.WithLabelValues(name, string(e.Type)).Inc()
		if e.Type == autoscale.EventJobStarted {
			m.wait.WithLabelValues(name).Observe(e.Wait.Seconds())
		}
	}
}
