package github

import (
	"net/http"
	"strings"
)

// RequestObserver is told the outcome of every request to GitHub (metrics):
// the method, a stable endpoint name ("github/broker/message",
// "github/run/renewjob", "github/results/GetStepLogsSignedBlobURL",
// "github/blob") and the status (0 when the request failed in transport).
type RequestObserver func(method, endpoint string, status int)

type observingTransport struct {
	next http.RoundTripper
	obs  RequestObserver
}

func (t observingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	t.obs(r.Method, endpointName(r.URL.Path), status)
	return resp, err
}

// endpointName names a request path without ids or signatures.
func endpointName(p string) string {
	seg := strings.Split(strings.Trim(p, "/"), "/")
	last := seg[len(seg)-1]
	switch {
	case strings.Contains(p, "/twirp/"):
		return "github/results/" + last
	case strings.Contains(p, "/oauth") || strings.Contains(p, "/_apis/oauth2/"):
		return "github/oauth/token"
	case last == "acquirejob" || last == "renewjob" || last == "completejob":
		return "github/run/" + last
	case last == "session" || last == "message" || last == "acknowledge":
		return "github/broker/" + last
	case strings.Contains(p, "/distributedtask/pools/") && strings.Contains(p, "/messages"):
		return "github/pipelines/messages"
	case strings.Contains(p, "/distributedtask/pools/") && strings.Contains(p, "/sessions"):
		return "github/pipelines/sessions"
	}
	return "github/blob"
}

// ObservedClient returns a client that reports every request to obs.
func ObservedClient(hc *http.Client, obs RequestObserver) *http.Client {
	if obs == nil {
		return hc
	}
	c := *hc
	next := c.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	c.Transport = observingTransport{next: next, obs: obs}
	return &c
}
