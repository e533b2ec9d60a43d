package github

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// RunnerVersion is the runner version Airlock announces to GitHub.
const RunnerVersion = "2.330.0"

// userAgent is sent with every request.
const userAgent = "airlock-github-runner/" + RunnerVersion

// APIError is an unsuccessful answer of one of GitHub's services. Its text
// never quotes a credential: only the status, the service's error kind and
// a bounded message.
type APIError struct {
	Op      string // e.g. "polling for messages"
	Status  int
	Kind    string // broker errorKind, OAuth error, run service source
	Message string
	// RetryAfter is the server's Retry-After, if it sent one.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("%s: HTTP %d", e.Op, e.Status)
	if e.Kind != "" {
		s += " " + e.Kind
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// StatusOf returns the HTTP status of an *APIError in err's chain (0 if none).
func StatusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func kindOf(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Kind
	}
	return ""
}

// errorBody is the union of the error shapes GitHub's services answer.
type errorBody struct {
	ErrorKind        string `json:"errorKind"`
	ErrorMessage     string `json:"errorMessage"`
	Source           string `json:"source"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	Message          string `json:"message"`
	TypeKey          string `json:"typeKey"`
}

func apiError(op string, resp *http.Response, body []byte) *APIError {
	e := &APIError{Op: op, Status: resp.StatusCode}
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil {
		switch {
		case eb.ErrorKind != "":
			e.Kind, e.Message = eb.ErrorKind, eb.ErrorMessage
		case eb.Error != "":
			e.Kind, e.Message = eb.Error, eb.ErrorDescription
		case eb.TypeKey != "":
			e.Kind, e.Message = eb.TypeKey, eb.Message
		default:
			e.Message = firstNonEmpty(eb.ErrorMessage, eb.Message)
		}
	}
	if len(e.Message) > 200 {
		e.Message = e.Message[:200] + "…"
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if d, err := time.ParseDuration(strings.TrimSpace(ra) + "s"); err == nil && d > 0 {
			e.RetryAfter = d
		}
	}
	return e
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// request is one call to a GitHub service.
type request struct {
	op     string
	method string
	url    string
	auth   string // the whole Authorization header value
	body   any    // JSON-encoded unless it is url.Values or []byte
	header http.Header
}

// do sends req and decodes a JSON answer into out (if not nil). It
// returns (false, nil) for a 2xx answer without a body (an empty poll).
func do(ctx context.Context, hc *http.Client, req request, out any) (bool, error) {
	var body io.Reader
	ctype := ""
	switch b := req.body.(type) {
	case nil:
	case url.Values:
		body, ctype = strings.NewReader(b.Encode()), "application/x-www-form-urlencoded"
	case []byte:
		body = bytes.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return false, fmt.Errorf("%s: encoding request: %w", req.op, err)
		}
		body, ctype = bytes.NewReader(buf), "application/json"
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, req.url, body)
	if err != nil {
		return false, fmt.Errorf("%s: %w", req.op, err)
	}
	for k, vs := range req.header {
		hr.Header[k] = vs
	}
	if ctype != "" {
		hr.Header.Set("Content-Type", ctype)
	}
	hr.Header.Set("Accept", "application/json")
	hr.Header.Set("User-Agent", userAgent)
	if req.auth != "" {
		hr.Header.Set("Authorization", req.auth)
	}
	resp, err := hc.Do(hr)
	if err != nil {
		return false, fmt.Errorf("%s: %w", req.op, redactURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return false, fmt.Errorf("%s: reading answer: %w", req.op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false, apiError(req.op, resp, data)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return false, nil
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return false, fmt.Errorf("%s: decoding answer: %w", req.op, err)
		}
	}
	return true, nil
}

// redactURLError drops the URL (which may be a signed blob URL) from a
// transport error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// resolve joins a path to a base URL that ends with '/' (§3: keep the
// trailing slash and resolve relatively).
func resolve(base, rel string) (string, error) {
	if base == "" {
		return "", errors.New("empty service URL")
	}
	if !strings.HasSuffix(base, "/") {
		base += "/"
	}
	b, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("parsing service URL: %w", err)
	}
	r, err := url.Parse(rel)
	if err != nil {
		return "", err
	}
	return b.ResolveReference(r).String(), nil
}
