// Package autoscale runs GitHub jobs on ephemeral runners made on demand:
// one JIT registration per queued job that this host's labels serve,
// created from a GitHub App (or a token) on the host, so that the JIT
// config — the runner's whole identity — never leaves the host process.
//
// Demand comes from `workflow_job` webhooks (signature verified over the
// raw body, deliveries de-duplicated) and from polling the queued runs of
// the configured repositories, so that a lost webhook never strands a job.
// Supply is capacity, not assignment: GitHub gives a job to any online
// runner whose labels match, so a JIT runner that got another queued job
// is fine, and one that got none within the idle timeout is deleted.
// Every registration is journaled before it is used; reconcile deletes
// this host's runners that are offline, idle too long or unknown to the
// journal, and never touches runners another host made.
package autoscale

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Scope is where runners are registered: an organization, or one
// repository ("owner/name").
type Scope struct {
	Org  string // organization login; or
	Repo string // "owner/name"
}

// ParseScope parses a GitHub URL naming an organization
// (https://github.com/ORG) or a repository (https://github.com/ORG/REPO),
// and returns the scope and the REST API base URL: api.github.com for
// github.com, https://HOST/api/v3 for any other host (GHES, and the tests'
// loopback fake).
func ParseScope(raw string) (Scope, string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return Scope{}, "", fmt.Errorf("url %q: want https://github.com/ORG or https://github.com/ORG/REPO", raw)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	var s Scope
	switch {
	case len(parts) == 1 && parts[0] != "":
		s.Org = parts[0]
	case len(parts) == 2 && parts[0] != "" && parts[1] != "":
		s.Repo = parts[0] + "/" + parts[1]
	default:
		return Scope{}, "", fmt.Errorf("url %q: want https://github.com/ORG or https://github.com/ORG/REPO", raw)
	}
	api := u.Scheme + "://" + u.Host + "/api/v3"
	if strings.EqualFold(u.Host, "github.com") {
		api = "https://api.github.com"
	}
	return s, api, nil
}

// path is the REST path prefix of the scope.
func (s Scope) path() string {
	if s.Repo != "" {
		owner, name, _ := strings.Cut(s.Repo, "/")
		return "/repos/" + url.PathEscape(owner) + "/" + url.PathEscape(name)
	}
	return "/orgs/" + url.PathEscape(s.Org)
}

// Contains reports whether repo ("owner/name") is in the scope.
func (s Scope) Contains(repo string) bool {
	if s.Repo != "" {
		return strings.EqualFold(s.Repo, repo)
	}
	owner, _, _ := strings.Cut(repo, "/")
	return strings.EqualFold(owner, s.Org)
}

func (s Scope) String() string {
	if s.Repo != "" {
		return s.Repo
	}
	return s.Org
}

// TokenSource gives the bearer token of REST calls: a GitHub App
// installation token (minted when the last one is near its end) or a
// fine-grained token.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// StaticToken is a token that does not change (a fine-grained PAT).
type StaticToken string

// Token returns the token.
func (t StaticToken) Token(context.Context) (string, error) { return string(t), nil }

// CachedToken caches a minted token until a minute before it expires.
type CachedToken struct {
	Mint func(ctx context.Context) (string, time.Time, error)

	mu  sync.Mutex
	tok string
	exp time.Time
}

// Token returns a live token, minting one when needed.
func (c *CachedToken) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tok != "" && time.Until(c.exp) > time.Minute {
		return c.tok, nil
	}
	tok, exp, err := c.Mint(ctx)
	if err != nil {
		return "", err
	}
	c.tok, c.exp = tok, exp
	return tok, nil
}

// rest is the subset of GitHub's REST API the autoscaler uses.
type rest struct {
	base  string // API base URL without trailing slash
	scope Scope
	auth  TokenSource
	http  *http.Client
}

// apiError is a GitHub REST error answer.
type apiError struct {
	Status  int
	Message string
	Op      string
}

func (e *apiError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%s: github answered %d", e.Op, e.Status)
	}
	return fmt.Sprintf("%s: github answered %d: %s", e.Op, e.Status, e.Message)
}

// statusOf returns the HTTP status of a REST error, 0 for others.
func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// do sends one request and decodes a 2xx JSON answer into out (nil: the
// body is drained).
func (r *rest) do(ctx context.Context, op, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		rd = bytes.NewReader(b)
	}
	tok, err := r.auth.Token(ctx)
	if err != nil {
		return fmt.Errorf("%s: getting a token: %w", op, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, rd)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	req.Header.Set("User-Agent", "airlock")
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e struct {
			Message string `json:"message"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		return &apiError{Status: resp.StatusCode, Message: e.Message, Op: op}
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s: reading the answer: %w", op, err)
	}
	return nil
}

// apiRunner is a runner as the REST API lists it.
type apiRunner struct {
	ID     int64  `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"` // online | offline
	Busy   bool   `json:"busy"`
}

// generateJIT registers a JIT runner and returns its id and encoded
// config. The config is the runner's identity: it is never logged.
func (r *rest) generateJIT(ctx context.Context, name string, group int64, labels []string) (int64, []byte, error) {
	var out struct {
		Runner           apiRunner `json:"runner"`
		EncodedJITConfig string    `json:"encoded_jit_config"`
	}
	body := map[string]any{"name": name, "runner_group_id": group, "labels": labels, "work_folder": "_work"}
	if err := r.do(ctx, "generating a JIT runner "+name, http.MethodPost, r.scope.path()+"/actions/runners/generate-jitconfig", body, &out); err != nil {
		return 0, nil, err
	}
	if out.Runner.ID == 0 || out.EncodedJITConfig == "" {
		return 0, nil, fmt.Errorf("generating a JIT runner %s: the answer has no runner id or config", name)
	}
	return out.Runner.ID, []byte(out.EncodedJITConfig), nil
}

// listRunners lists the scope's runners, every page.
func (r *rest) listRunners(ctx context.Context) ([]apiRunner, error) {
	var all []apiRunner
	for page := 1; ; page++ {
		var out struct {
			TotalCount int         `json:"total_count"`
			Runners    []apiRunner `json:"runners"`
		}
		if err := r.do(ctx, "listing runners", http.MethodGet, r.scope.path()+"/actions/runners?per_page=100&page="+strconv.Itoa(page), nil, &out); err != nil {
			return nil, err
		}
		all = append(all, out.Runners...)
		if len(out.Runners) < 100 || len(all) >= out.TotalCount || page >= 100 {
			return all, nil
		}
	}
}

// deleteRunner deletes a runner; one that is gone already is no error.
func (r *rest) deleteRunner(ctx context.Context, id int64) error {
	err := r.do(ctx, "deleting runner "+strconv.FormatInt(id, 10), http.MethodDelete, r.scope.path()+"/actions/runners/"+strconv.FormatInt(id, 10), nil, nil)
	if statusOf(err) == http.StatusNotFound {
		return nil
	}
	return err
}

// apiRun is a workflow run.
type apiRun struct {
	ID             int64  `json:"id"`
	Event          string `json:"event"`
	Status         string `json:"status"`
	Repository     repoOf `json:"repository"`
	HeadRepository repoOf `json:"head_repository"`
}

type repoOf struct {
	FullName string `json:"full_name"`
}

// apiJob is a workflow job (REST and webhook share the shape).
type apiJob struct {
	ID        int64     `json:"id"`
	RunID     int64     `json:"run_id"`
	Name      string    `json:"name"`
	Status    string    `json:"status"` // queued | waiting | in_progress | completed
	Labels    []string  `json:"labels"`
	CreatedAt time.Time `json:"created_at"`
}

func repoPath(repo string) string {
	owner, name, _ := strings.Cut(repo, "/")
	return "/repos/" + url.PathEscape(owner) + "/" + url.PathEscape(name)
}

// queuedRuns lists a repository's queued workflow runs (first page: the
// poll runs often).
func (r *rest) queuedRuns(ctx context.Context, repo string) ([]apiRun, error) {
	var out struct {
		Runs []apiRun `json:"workflow_runs"`
	}
	if err := r.do(ctx, "listing queued runs of "+repo, http.MethodGet, repoPath(repo)+"/actions/runs?status=queued&per_page=100", nil, &out); err != nil {
		return nil, err
	}
	return out.Runs, nil
}

// run returns one workflow run.
func (r *rest) run(ctx context.Context, repo string, id int64) (apiRun, error) {
	var out apiRun
	err := r.do(ctx, fmt.Sprintf("reading run %d of %s", id, repo), http.MethodGet, repoPath(repo)+"/actions/runs/"+strconv.FormatInt(id, 10), nil, &out)
	return out, err
}

// runJobs lists a run's jobs.
func (r *rest) runJobs(ctx context.Context, repo string, runID int64) ([]apiJob, error) {
	var out struct {
		Jobs []apiJob `json:"jobs"`
	}
	if err := r.do(ctx, fmt.Sprintf("listing jobs of run %d of %s", runID, repo), http.MethodGet, repoPath(repo)+"/actions/runs/"+strconv.FormatInt(runID, 10)+"/jobs?per_page=100", nil, &out); err != nil {
		return nil, err
	}
	return out.Jobs, nil
}
