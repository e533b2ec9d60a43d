package gitlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/backoff"
)

const (
	// longPollTimeout bounds the wait for response headers; Workhorse holds
	// a job request for up to about a minute, so this must be generous.
	longPollTimeout = 10 * time.Minute
	// maxResponseBody bounds every response body read into memory.
	maxResponseBody = 32 << 20
	// maxErrorBody bounds the part of an error response kept for messages.
	maxErrorBody = 512
)

// Client talks to one GitLab instance. It is safe for concurrent use.
type Client struct {
	base      *url.URL // scheme://host[:port][/prefix], no trailing slash
	hc        *http.Client
	log       hclog.Logger
	version   string
	revision  string
	executor  string
	shell     string
	features  Features
	userAgent string

	// sleep waits for d or until ctx ends; replaced in tests.
	sleep func(ctx context.Context, d time.Duration) error

	mu         sync.Mutex
	lastUpdate map[string]string // runner token -> last X-GitLab-Last-Update

	// observe, if set, is told the outcome of every request (metrics).
	observe RequestObserver
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send its requests with hc (tests pass the
// fake's client). Redirects are never followed automatically either way:
// tokens must not travel to a host the client did not choose.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithLogger sets the runner logger (never used for job output).
func WithLogger(l hclog.Logger) Option { return func(c *Client) { c.log = l } }

// WithVersion sets the version and revision sent in the User-Agent and in
// the runner info.
func WithVersion(version, revision string) Option {
	return func(c *Client) { c.version, c.revision = version, revision }
}

// WithExecutor sets the executor and shell names reported to GitLab.
func WithExecutor(executor, shell string) Option {
	return func(c *Client) { c.executor, c.shell = executor, shell }
}

// WithFeatures sets the features advertised on job requests. Advertise only
// what the runner really implements: GitLab relies on it.
func WithFeatures(f Features) Option { return func(c *Client) { c.features = f } }

// New returns a client for the GitLab instance at baseURL, e.g.
// "https://gitlab.example.com" (a trailing "/" or "/ci" is removed).
func New(baseURL string, opts ...Option) (*Client, error) {
	raw := strings.TrimRight(strings.TrimSpace(baseURL), "/")
	raw = strings.TrimSuffix(raw, "/ci")
	raw = strings.TrimRight(raw, "/")
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing GitLab URL: %w", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("parsing GitLab URL %q: scheme must be https or http", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("parsing GitLab URL %q: no host", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("parsing GitLab URL: must not carry credentials, a query or a fragment")
	}
	c := &Client{
		base:       u,
		log:        hclog.NewNullLogger(),
		version:    "dev",
		executor:   "docker",
		shell:      "sh",
		features:   DefaultFeatures(),
		sleep:      backoff.Sleep,
		lastUpdate: map[string]string{},
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		c.hc = &http.Client{Transport: defaultTransport()}
	}
	// A shallow copy so that the caller's client keeps its own redirect policy.
	hc := *c.hc
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c.hc = &hc
	c.userAgent = "airlock/" + c.version
	if c.revision != "" {
		c.userAgent += " (" + c.revision + "; " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	}
	return c, nil
}

func defaultTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: longPollTimeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   8,
		ForceAttemptHTTP2:     true,
	}
}

// URL returns the instance's base URL (without /api/v4).
func (c *Client) URL() string { return c.base.String() }

func (c *Client) endpoint(path string) string {
	return c.base.String() + "/api/v4" + path
}

func requestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Sprintf("airlock-%d", time.Now().UnixNano())
	}
	return hex.EncodeToString(b[:])
}

// call is one request to the API.
type call struct {
	op       string // gerund for errors, e.g. "verifying runner"
	method   string
	url      string // absolute
	body     any    // JSON-encoded when not nil
	raw      io.Reader
	ctype    string
	jobToken string
	header   map[string]string
}

// response is a completed request: status, headers and a bounded body.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (c *Client) do(ctx context.Context, cl call) (*response, error) {
	var body io.Reader = cl.raw
	ctype := cl.ctype
	if cl.body != nil {
		b, err := json.Marshal(cl.body)
		if err != nil {
			return nil, fmt.Errorf("%s: encoding request: %w", cl.op, err)
		}
		body = bytes.NewReader(b)
		ctype = "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, cl.url, body)
	if err != nil {
		return nil, fmt.Errorf("%s: building request: %w", cl.op, err)
	}
	rid := requestID()
	req.Header.Set("X-Request-Id", rid)
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "application/json")
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if cl.jobToken != "" {
		req.Header.Set("JOB-TOKEN", cl.jobToken)
	}
	for k, v := range cl.header {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// url.Error carries the URL, which never holds a token here.
		var certErr *tls.CertificateVerificationError
		c.observed(cl, 0)
		return nil, &APIError{Op: cl.op, Err: err, retryable: ctx.Err() == nil && !errors.As(err, &certErr)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return nil, &APIError{Op: cl.op, Status: resp.StatusCode, Err: fmt.Errorf("reading response: %w", err), retryable: ctx.Err() == nil}
	}
	if len(data) > maxResponseBody {
		return nil, &APIError{Op: cl.op, Status: resp.StatusCode, Err: fmt.Errorf("response body larger than %d bytes", maxResponseBody)}
	}
	c.observed(cl, resp.StatusCode)
	c.log.Trace("api request", "op", cl.op, "method", cl.method, "status", resp.StatusCode, "request_id", rid)
	return &response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

// unexpected builds the error for a status the caller has no meaning for.
func unexpected(op string, r *response) error {
	return &APIError{
		Op:         op,
		Status:     r.status,
		Message:    serverMessage(r.body),
		RetryAfter: retryAfter(r.header, time.Now()),
		retryable:  retryableStatus(r.status),
	}
}

// serverMessage extracts GitLab's {"message": ...} or a bounded, printable
// prefix of the body.
func serverMessage(body []byte) string {
	var m struct {
		Message any `json:"message"`
		Error   any `json:"error"`
	}
	s := ""
	if json.Unmarshal(body, &m) == nil && (m.Message != nil || m.Error != nil) {
		v := m.Message
		if v == nil {
			v = m.Error
		}
		if str, ok := v.(string); ok {
			s = str
		} else {
			b, _ := json.Marshal(v)
			s = string(b)
		}
	} else {
		s = string(body)
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > maxErrorBody {
		s = s[:maxErrorBody] + "..."
	}
	return s
}

// retrying runs fn up to attempts times while it fails with a retryable
// error, backing off between attempts.
func (c *Client) retrying(ctx context.Context, attempts int, fn func() error) error {
	b := NewBackoff(100*time.Millisecond, 60*time.Second)
	var err error
	for i := 0; i < attempts; i++ {
		if err = fn(); err == nil {
			return nil
		}
		if !IsRetryable(err) || i == attempts-1 {
			return err
		}
		d := b.Next(err)
		c.log.Debug("retrying GitLab request", "error", err, "wait", d)
		if serr := c.sleep(ctx, d); serr != nil {
			return errors.Join(err, serr)
		}
	}
	return err
}
