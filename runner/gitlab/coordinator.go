package gitlab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/job"
)

// CoordinatorConfig configures a Coordinator: one [[runners]] entry the
// agent serves.
type CoordinatorConfig struct {
	Runner RunnerConfig
	// SystemID identifies this runner manager to GitLab (see SystemID).
	SystemID string
	// Executor is the executor name GitLab is told ("docker",
	// "containerd"): the one that really runs the jobs. Default: the
	// entry's executor, else "docker".
	Executor string
	// Version and Revision are reported to GitLab.
	Version, Revision string
	// HTTPClient sends the API requests (default: the package's).
	HTTPClient *http.Client
	// Observer, if set, is told the outcome of every API request (metrics).
	Observer RequestObserver
	// TraceInterval is how often the job log is sent (default: GitLab's
	// X-GitLab-Trace-Update-Interval, 3s before GitLab says otherwise).
	TraceInterval time.Duration
	// KeepAlive is how long the job log may stay quiet before the job is
	// touched (PUT state=running), which is also when a cancel made in
	// GitLab is noticed during silence (default 30s, gitlab-runner's).
	KeepAlive time.Duration
	// Git is the git binary sources are cloned with on the host (default
	// "git" from PATH).
	Git string
	// TokenRotated, if set, persists a runner token the coordinator
	// rotated (at 75% of its lifetime, see RunnerConfig.TokenRotationDue):
	// the old token no longer works, so the new one must reach the
	// configuration file. rc is the entry with the new token.
	TokenRotated func(rc RunnerConfig) error
	// GitCacheDir keeps a bare repository per project for GIT_STRATEGY
	// fetch (the default when GitLab allows it), so that fetches are
	// incremental; "" makes every fetch a clone.
	GitCacheDir string
	// VaultServers are the Vault URLs the host may contact for a job's
	// secrets: ([gitlab_secrets] vault_servers); a job naming another is
	// refused. VaultHTTPClient talks to them (default: a plain client).
	VaultServers    []string
	VaultHTTPClient *http.Client
	// TempDir holds the copies of workspaces and the archives built from
	// them while a job's artifacts and caches are made (default
	// os.TempDir(); on disk rather than tmpfs is better for large ones).
	TempDir string
	// WorkDir is the job's working directory in the container
	// (CI_PROJECT_DIR), as the runner's; default /builds.
	WorkDir string
	// Cache keeps job caches ([cache] dir); nil: cache: entries are
	// skipped with a warning in the job log.
	Cache CacheStore
	// Logger is the runner log (never job output).
	Logger hclog.Logger
}

// Coordinator serves one GitLab runner registration to the agent
// (job.Coordinator): it requests jobs, rotates the runner token, and turns
// each job into a lease that streams the trace, uploads the audit trail and
// reports the final state.
type Coordinator struct {
	cfg      CoordinatorConfig
	c        *Client
	log      hclog.Logger
	name     string
	instance string // short hash of the instance URL: part of job ids

	mu sync.Mutex
	rc RunnerConfig
}

var _ job.Coordinator = (*Coordinator)(nil)

// NewCoordinator returns the coordinator of one [[runners]] entry.
func NewCoordinator(cfg CoordinatorConfig) (*Coordinator, error) {
	rc := cfg.Runner
	if errs := rc.Validate("runner"); len(errs) > 0 {
		return nil, fmt.Errorf("creating GitLab coordinator %q: %w", rc.Name, errors.Join(errs...))
	}
	if cfg.SystemID == "" {
		return nil, fmt.Errorf("creating GitLab coordinator %q: no system id", rc.Name)
	}
	if cfg.Executor == "" {
		cfg.Executor = rc.Executor
	}
	if cfg.Executor == "" {
		cfg.Executor = "docker"
	}
	if cfg.Git == "" {
		cfg.Git = "git"
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	opts := []Option{
		WithLogger(log.Named("gitlab")),
		WithVersion(cfg.Version, cfg.Revision),
		WithExecutor(cfg.Executor, "sh"),
	}
	if cfg.HTTPClient != nil {
		opts = append(opts, WithHTTPClient(cfg.HTTPClient))
	}
	if cfg.Observer != nil {
		opts = append(opts, WithRequestObserver(cfg.Observer))
	}
	c, err := New(rc.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("creating GitLab coordinator %q: %w", rc.Name, err)
	}
	inst := InstanceID(c.URL())
	return &Coordinator{
		cfg: cfg, c: c, rc: rc,
		log:      log.With("runner", rc.Name),
		name:     fmt.Sprintf("gitlab:%s@%s", rc.Name, inst),
		instance: inst,
	}, nil
}

// InstanceID is the short, stable name of a GitLab instance in job ids:
// the first 8 hex digits of the SHA-256 of its normalized URL.
func InstanceID(url string) string {
	h := sha256.Sum256([]byte(url))
	return hex.EncodeToString(h[:4])
}

// JobID is the agent-wide unique id of GitLab job id of the instance at
// url: "gitlab-<instance>-<id>". GitLab's numeric ids are unique only
// within one instance.
func JobID(url string, id int64) string {
	return "gitlab-" + InstanceID(url) + "-" + strconv.FormatInt(id, 10)
}

// Name identifies the coordinator: "gitlab:<runner name>@<instance>"
// (stable across token rotation and re-registration; [[runners]] names are
// unique in the configuration).
func (c *Coordinator) Name() string { return c.name }

// Limit is the entry's limit (0: only the agent's concurrent limit).
func (c *Coordinator) Limit() int { return c.cfg.Runner.Limit }

// RequestConcurrency is the entry's request_concurrency (default 1): how
// many job requests may be in flight at once.
func (c *Coordinator) RequestConcurrency() int { return max(c.cfg.Runner.RequestConcurrency, 1) }

// Client is the coordinator's API client.
func (c *Coordinator) Client() *Client { return c.c }

// Acquire requests one job. (nil, nil): none right now. A job whose
// payload cannot be read but that names its id and token comes back as a
// lease whose Job fails, so that the agent fails it in GitLab; one that
// names neither is an error (backed off: GitLab would hand it again).
func (c *Coordinator) Acquire(ctx context.Context) (job.Lease, error) {
	c.mu.Lock()
	due := c.rc.TokenRotationDue(time.Now())
	c.mu.Unlock()
	if due {
		if err := c.rotateToken(ctx); err != nil {
			return nil, fmt.Errorf("rotating the runner token: %w", err)
		}
	}
	c.mu.Lock()
	token := c.rc.Token
	c.mu.Unlock()
	resp, err := c.c.RequestJob(ctx, token, c.cfg.SystemID)
	var pe *PayloadError
	switch {
	case err == nil && resp == nil:
		return nil, nil
	case err == nil:
		return c.newLease(resp, nil, leaseRecord{}, false), nil
	case errors.As(err, &pe) && pe.ID > 0 && pe.Token != "":
		c.log.Error("GitLab sent a job that cannot be decoded; failing it", "job", pe.ID, "error", pe)
		resp := &JobResponse{ID: pe.ID, Token: pe.Token}
		return c.newLease(resp, fmt.Errorf("its payload cannot be read: %w", pe.Err), leaseRecord{}, false), nil
	case errors.As(err, &pe):
		return nil, fmt.Errorf("GitLab sent a job that cannot be decoded and names no job to fail: %w", err)
	case errors.Is(err, ErrTokenInvalid):
		return nil, fmt.Errorf("GitLab refused the runner token; re-register the runner (airlock register): %w", err)
	}
	return nil, err
}

// rotateToken replaces the runner's token before it expires and has the
// new one persisted.
func (c *Coordinator) rotateToken(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.rc.TokenRotationDue(time.Now()) {
		return nil // another request loop rotated it
	}
	creds, err := c.c.ResetToken(ctx, c.rc.Token)
	if err != nil {
		return err
	}
	c.rc.Token = creds.Token
	c.rc.TokenObtainedAt = time.Now().UTC().Truncate(time.Second)
	c.rc.TokenExpiresAt = creds.TokenExpiresAt
	c.log.Info("rotated the runner token", "expires", creds.TokenExpiresAt)
	if c.cfg.TokenRotated != nil {
		if err := c.cfg.TokenRotated(c.rc); err != nil {
			// The old token is gone: without the new one in the file the
			// next start cannot authenticate. Say so loudly, go on.
			c.log.Error("saving the rotated runner token failed; the runner keeps working until it restarts, then needs `airlock register` again", "error", err)
		}
	}
	return nil
}

// leaseRecord is a lease's journal record: enough to report the job after
// a crash. It holds the job token, so the agent keeps it sealed.
type leaseRecord struct {
	URL   string        `json:"url"`
	JobID int64         `json:"job_id"`
	Token string        `json:"token"`
	Trace TraceProgress `json:"trace,omitzero"`
}

// Resume rebuilds the lease of a job a crashed run journaled; its Finish
// appends to the trace GitLab holds and reports the job failed.
func (c *Coordinator) Resume(record []byte) (job.Lease, error) {
	var r leaseRecord
	if err := json.Unmarshal(record, &r); err != nil {
		return nil, fmt.Errorf("reading GitLab job record: %w", err)
	}
	if r.JobID <= 0 || r.Token == "" {
		return nil, errors.New("reading GitLab job record: no job id or token")
	}
	if r.URL != c.c.URL() {
		return nil, fmt.Errorf("reading GitLab job record: job %d is of %s, not of this runner's %s", r.JobID, r.URL, c.c.URL())
	}
	return c.newLease(&JobResponse{ID: r.JobID, Token: r.Token}, nil, r, true), nil
}
