package github

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/backoff"
	"github.com/airlock-ci/airlock/runner/job"
)

// Defaults of Config's zero durations (§4).
const (
	DefaultRenewInterval  = 60 * time.Second
	DefaultFirstRenewWait = 10 * time.Second
	firstRenewTries       = 5
	lockGrace             = 5 * time.Minute
)

// ErrEphemeralDone is returned by Acquire once an ephemeral (JIT) runner
// ran its one job: GitHub deletes the runner, so it is gone for the agent.
var ErrEphemeralDone = fmt.Errorf("the ephemeral runner has run its job: %w", job.ErrCoordinatorGone)

// Converter turns an acquired job message (§5, raw JSON) into a job. The
// coordinator sets the job's ID and Source afterwards. An error fails the
// job (reported to GitHub) before anything of it runs.
type Converter func(msg []byte) (*Conversion, error)

// Conversion is a converted job and, when the job needs GitHub's step
// semantics, the driver the runner runs its steps with. A driver with a
// Report method (Driver) gives completejob the job's outputs, annotations
// and step conclusions, and the results service its step summaries.
type Conversion struct {
	Job    *job.Job
	Driver job.StepDriver
}

// reporter is what the lease reads from a Driver after the last step.
type reporter interface{ Report() Report }

// MessageConverter is the Converter of the workflow half: the message
// decoded and converted by ToJob, its steps run by a Driver whose actions
// are fetched on the host through the job's launch service (hc).
func MessageConverter(defaultImage, runnerName string, hc *http.Client, log hclog.Logger) Converter {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Minute}
	}
	return func(msg []byte) (*Conversion, error) {
		m, err := DecodeJobMessage(msg)
		if err != nil {
			return nil, err
		}
		j, err := m.ToJob(ConvertOptions{DefaultImage: defaultImage})
		if err != nil {
			return nil, err
		}
		src := &launchSource{hc: hc, launchURL: m.LaunchURL(), token: m.JobToken(), planID: m.Plan.PlanID, jobID: m.JobID}
		d := NewDriver(m, j, DriverOptions{Actions: src, RunnerName: runnerName, Log: log})
		return &Conversion{Job: j, Driver: d}, nil
	}
}

// Config configures a Coordinator.
type Config struct {
	// Name is the [[github]] entry's name; the coordinator is "github:Name".
	Name         string
	Registration *Registration
	Convert      Converter
	HTTPClient   *http.Client // default: a client with a 2-minute timeout
	Logger       hclog.Logger
	// Observer, if set, is told the outcome of every request (metrics).
	Observer RequestObserver

	// RenewInterval is how often the job lock is renewed (60 s);
	// FirstRenewWait the pause between tries of the first renewal (10 s),
	// ErrorWait the base back-off after a failed poll or renewal (15 s,
	// with jitter up to twice that). Tests shorten them.
	RenewInterval  time.Duration
	FirstRenewWait time.Duration
	ErrorWait      time.Duration
	// LockGrace is how long past lockedUntil failed renewals are retried
	// before the job is abandoned (5 min).
	LockGrace time.Duration
}

// Coordinator serves one GitHub runner registration to the agent. A
// registration runs one job at a time (Limit is 1): while it runs, the
// lease keeps polling with status Busy to receive its cancellation.
type Coordinator struct {
	cfg Config
	reg *Registration
	ts  *tokenSource
	hc  *http.Client
	log hclog.Logger

	mu   sync.Mutex
	sess *session
	busy *lease
	took bool  // an ephemeral runner took its job
	gone error // the registration is gone: every Acquire returns it
}

// New returns a Coordinator for cfg.Registration.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Registration == nil {
		return nil, errors.New("creating GitHub coordinator: registration is required")
	}
	if err := cfg.Registration.Validate(); err != nil {
		return nil, fmt.Errorf("creating GitHub coordinator %q: %w", cfg.Name, err)
	}
	if cfg.Convert == nil {
		return nil, errors.New("creating GitHub coordinator: a job converter is required")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 2 * pollTimeout}
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = DefaultRenewInterval
	}
	if cfg.FirstRenewWait <= 0 {
		cfg.FirstRenewWait = DefaultFirstRenewWait
	}
	if cfg.ErrorWait <= 0 {
		cfg.ErrorWait = 15 * time.Second
	}
	if cfg.LockGrace <= 0 {
		cfg.LockGrace = lockGrace
	}
	c := &Coordinator{cfg: cfg, reg: cfg.Registration, hc: ObservedClient(cfg.HTTPClient, cfg.Observer)}
	c.ts = &tokenSource{reg: c.reg, hc: c.hc, now: time.Now}
	c.log = cfg.Logger.With("coordinator", c.Name(), "runner_id", c.reg.AgentID)
	return c, nil
}

// Name is "github:NAME".
func (c *Coordinator) Name() string { return "github:" + c.cfg.Name }

// Limit is 1: GitHub gives a runner one job at a time.
func (c *Coordinator) Limit() int { return 1 }

// Ephemeral reports whether this is a JIT runner (one job, then gone).
func (c *Coordinator) Ephemeral() bool { return c.reg.Ephemeral }

func (c *Coordinator) fail(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone == nil {
		c.gone = err
		c.log.Error("stopping this GitHub runner: its registration is gone; register it again (airlock register github)", "error", err)
	}
	return c.gone
}

// openSession returns the session, creating it when needed.
func (c *Coordinator) session(ctx context.Context) (*session, error) {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := openSession(ctx, c.reg, c.ts, c.hc)
	if err != nil {
		err = classifyBroker(err)
		if errors.Is(err, job.ErrCoordinatorGone) {
			return nil, c.fail(err)
		}
		if StatusOf(err) == http.StatusConflict {
			return nil, fmt.Errorf("%w: another process holds a session for this runner (it ends when that process stops; a crashed one times out on GitHub's side)", err)
		}
		return nil, err
	}
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
	c.log.Info("listening for GitHub jobs", "session", s.id)
	return s, nil
}

func (c *Coordinator) dropSession(s *session, why string) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
	}
	c.mu.Unlock()
	c.log.Debug("message session dropped", "reason", why)
}

// closeSession deletes the session on GitHub.
func (c *Coordinator) closeSession(ctx context.Context) error {
	c.mu.Lock()
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s == nil {
		return nil
	}
	if err := s.close(ctx); err != nil && !errors.Is(err, job.ErrCoordinatorGone) && StatusOf(err) != http.StatusNotFound {
		return fmt.Errorf("closing GitHub session of %s: %w", c.Name(), err)
	}
	return nil
}

// Close deletes the message session (the runner goes offline). Acquire
// after Close opens a new one.
func (c *Coordinator) Close(ctx context.Context) error { return c.closeSession(ctx) }

// Acquire long-polls once for a job (status Online).
func (c *Coordinator) Acquire(ctx context.Context) (job.Lease, error) {
	c.mu.Lock()
	gone, busy, took := c.gone, c.busy != nil, c.took
	c.mu.Unlock()
	switch {
	case gone != nil:
		return nil, gone
	case busy:
		return nil, nil
	case took:
		return nil, ErrEphemeralDone
	}
	s, err := c.session(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, err
	}
	m, err := s.poll(ctx, statusOnline)
	if ctx.Err() != nil {
		c.idleStop()
		return nil, nil
	}
	if err != nil {
		return nil, c.pollError(s, err)
	}
	if m == nil {
		return nil, nil
	}
	return c.handle(ctx, s, m)
}

// idleStop closes the session when the agent stopped asking and no job
// runs: the runner shows offline on GitHub.
func (c *Coordinator) idleStop() {
	c.mu.Lock()
	busy := c.busy != nil
	c.mu.Unlock()
	if busy {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.closeSession(ctx); err != nil {
		c.log.Warn("closing the message session failed", "error", err)
	}
}

func (c *Coordinator) pollError(s *session, err error) error {
	if errors.Is(err, job.ErrCoordinatorGone) {
		return c.fail(err)
	}
	if kindOf(err) == kindRunnerSessionInvalid || StatusOf(err) == http.StatusNotFound {
		c.dropSession(s, "session invalid")
	}
	return err
}

// handle acts on one message polled while idle.
func (c *Coordinator) handle(ctx context.Context, s *session, m *message) (job.Lease, error) {
	switch m.MessageType {
	case msgRunnerJobRequest:
		var jr jobRequest
		if err := decodeJSON(m.Body, &jr); err != nil {
			return nil, fmt.Errorf("decoding job request: %w", err)
		}
		return c.take(ctx, s, jr)
	case msgForceTokenRefresh:
		c.ts.Invalidate("")
	case msgBrokerMigration:
		var mig struct {
			BrokerBaseURL string `json:"brokerBaseUrl"`
		}
		if decodeJSON(m.Body, &mig) == nil && mig.BrokerBaseURL != "" {
			s.broker = mig.BrokerBaseURL
		}
	case msgJobCancellation:
		c.log.Debug("cancellation of a job this runner does not run; ignored")
	case msgPipelineJobRequest:
		c.log.Error("GitHub sent a job in the older pipelines format (PipelineAgentJobRequest), which Airlock does not run; the job stays queued for another runner")
	default:
		c.log.Debug("message ignored", "type", m.MessageType)
	}
	return nil, nil
}

// take acquires the job a request refers to and holds its lock: no lease
// (so no step) exists before the first renewal succeeded.
func (c *Coordinator) take(ctx context.Context, s *session, jr jobRequest) (job.Lease, error) {
	c.mu.Lock()
	if c.reg.Ephemeral && c.took {
		c.mu.Unlock()
		c.log.Warn("ephemeral runner refuses a second job; GitHub re-queues it")
		return nil, ErrEphemeralDone
	}
	c.mu.Unlock()
	log := c.log.With("request", jr.RunnerRequestID)
	if jr.ShouldAcknowledge {
		if err := s.acknowledge(ctx, jr.RunnerRequestID, statusOnline); err != nil {
			if kindOf(err) == "AcknowledgeJobNotFound" || StatusOf(err) == http.StatusNotFound {
				log.Info("job request withdrawn before it was acknowledged")
				return nil, nil
			}
			return nil, err
		}
	}
	raw, err := acquireJob(ctx, c.ts, c.hc, jr)
	if err != nil {
		if errors.Is(err, job.ErrCoordinatorGone) {
			return nil, c.fail(err)
		}
		switch StatusOf(err) {
		case http.StatusNotFound, http.StatusConflict, http.StatusUnprocessableEntity:
			log.Info("job not acquired (taken or withdrawn); skipped", "error", err)
			return nil, nil
		}
		return nil, err
	}
	info, err := parseEnvelope(raw, jr.RunServiceURL)
	if err != nil {
		// Without ids or a job token nothing can be reported: GitHub
		// abandons it when the lock lapses.
		log.Error("acquired job message is unusable", "error", err)
		return nil, nil
	}
	info.Coordinator, info.RequestID, info.Billing = c.Name(), jr.RunnerRequestID, jr.BillingOwnerID
	l := c.newLease(info, raw)
	until, err := l.firstRenew(ctx)
	if err != nil {
		log.Error("job lock could not be renewed; the job is not run", "job", info.JobID, "error", err)
		return nil, nil
	}
	l.lockedUntil = until
	c.mu.Lock()
	c.busy = l
	if c.reg.Ephemeral {
		c.took = true
	}
	c.mu.Unlock()
	log.Info("job acquired", "job", info.JobID, "name", info.Name)
	return l, nil
}

// released is called by a lease's Finish.
func (c *Coordinator) released(l *lease) {
	c.mu.Lock()
	if c.busy == l {
		c.busy = nil
	}
	eph := c.reg.Ephemeral
	c.mu.Unlock()
	if eph {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.closeSession(ctx); err != nil {
			c.log.Warn("closing the ephemeral runner's session failed", "error", err)
		}
	}
}

// jitter returns d plus up to d more, at random.
func jitter(d time.Duration) time.Duration { return backoff.Jitter(2 * d) }

// JITFactory makes the coordinator of a just-in-time runner from its
// encoded config, for an autoscaler that generates JIT configs
// (autoscale.JITFactory), and resumes the leases such runners journaled.
type JITFactory struct {
	Convert    Converter
	HTTPClient *http.Client
	Observer   RequestObserver
	Logger     hclog.Logger
}

// NewJIT parses the encoded config and returns its one-job coordinator,
// named after the runner.
func (f JITFactory) NewJIT(encoded []byte) (job.Coordinator, error) {
	reg, err := ParseJITConfig(string(encoded))
	if err != nil {
		return nil, err
	}
	return New(Config{Name: reg.AgentName, Registration: reg, Convert: f.Convert, HTTPClient: f.HTTPClient,
		Observer: f.Observer, Logger: f.Logger})
}

// Resume rebuilds the lease of a job a JIT runner journaled (its runner is
// gone by now; the job token in the record is enough to report it).
func (f JITFactory) Resume(record []byte) (job.Lease, error) {
	hc := f.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 2 * pollTimeout}
	}
	log := f.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &Coordinator{cfg: Config{Name: "resumed"}, reg: &Registration{Ephemeral: true}, hc: ObservedClient(hc, f.Observer), log: log}
	return c.Resume(record)
}
