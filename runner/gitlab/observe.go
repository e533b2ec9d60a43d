package gitlab

import (
	"net/url"
	"strings"
)

// RequestObserver is told the outcome of every API request the client
// sends: its method, its endpoint with ids replaced by ":id" (e.g.
// "/jobs/:id/trace") and the HTTP status, 0 when no response arrived. It
// is called from the requesting goroutine and must return quickly.
type RequestObserver func(method, endpoint string, status int)

// WithRequestObserver sets the client's RequestObserver (metrics).
func WithRequestObserver(f RequestObserver) Option { return func(c *Client) { c.observe = f } }

func (c *Client) observed(cl call, status int) {
	if c.observe == nil {
		return
	}
	c.observe(cl.method, endpointLabel(cl.url), status)
}

// endpointLabel turns an absolute API URL into a bounded label: the path
// after /api/v4 with every numeric segment replaced by ":id".
func endpointLabel(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "unknown"
	}
	p := u.Path
	if i := strings.Index(p, "/api/v4"); i >= 0 {
		p = p[i+len("/api/v4"):]
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if s != "" && strings.Trim(s, "0123456789") == "" {
			segs[i] = ":id"
		}
	}
	return strings.Join(segs, "/")
}
