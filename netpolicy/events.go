package netpolicy

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Event kinds.
const (
	KindDNS     = "dns"
	KindHTTP    = "http"
	KindConnect = "connect"
	KindTLS     = "tls"
	KindProxied = "proxied"
	KindAlert   = "alert"
	// KindDropped reports, in Event.Dropped, how many events of each kind
	// were decided (and counted in the Summary) but could not be queued
	// for the sink in time.
	KindDropped = "events_dropped"
)

// Verdicts.
const (
	VerdictAllowed = "allowed"
	VerdictDenied  = "denied"
)

// Event is one gateway decision. It never carries bodies, header values or
// secret values; credentials are identified by GrantID only.
type Event struct {
	Job      string        `json:"job"`
	Time     time.Time     `json:"time"`
	Kind     string        `json:"kind"`
	Host     string        `json:"host,omitempty"`
	Addr     string        `json:"addr,omitempty"`
	Port     int           `json:"port,omitempty"`
	Verdict  string        `json:"verdict"`
	Reason   string        `json:"reason,omitempty"`
	Bytes    int64         `json:"bytes,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Method   string        `json:"method,omitempty"` // HTTP method; the query type for dns events
	Path     string        `json:"path,omitempty"`
	Status   int           `json:"status,omitempty"` // HTTP status; the DNS rcode for dns events
	GrantID  string        `json:"grant_id,omitempty"`
	// CertGrantID and CertFingerprint name the mTLS credential the
	// gateway presented upstream for a KindProxied request (with or
	// without a header credential, GrantID).
	CertGrantID     string `json:"cert_grant_id,omitempty"`
	CertFingerprint string `json:"cert_fingerprint,omitempty"`
	// Dropped is set on KindDropped events only: kind -> count.
	Dropped map[string]int64 `json:"dropped,omitempty"`
}

// EventSink receives gateway events. Each registered job has a queue of
// its own drained by one goroutine, so Emit is called concurrently for
// different jobs but in order, from one goroutine, for each job. It may
// block: a job whose queue is full waits (back-pressure on that job's
// connections and DNS queries, never on another job's) up to
// GatewayConfig.EventWait, and only then is the event dropped; the drop is
// counted and reported to the sink as a KindDropped event. A job's
// remaining events are delivered before Unregister returns.
type EventSink interface {
	Emit(Event)
}

// BatchSink is an optional EventSink capability: the gateway hands over
// everything a job's queue holds at once (one job per call, in order), so
// that the sink can record a batch with one write and one fsync. The slice
// is reused after EmitBatch returns.
type BatchSink interface {
	EmitBatch([]Event)
}

// EventSinkFunc adapts a function to EventSink.
type EventSinkFunc func(Event)

// Emit calls f(ev).
func (f EventSinkFunc) Emit(ev Event) { f(ev) }

// Summary counts one job's gateway decisions; airlock exec prints it.
type Summary struct {
	Allowed int
	Denied  int
	Alerts  int
	// Dropped counts the decisions above that the sink did not receive
	// one by one (the trail has an events_dropped record with the counts).
	Dropped int64
	// DeniedDestinations counts denials per destination ("host:port",
	// "host" for DNS, or the refused source address).
	DeniedDestinations map[string]int
}

// String renders the summary for a terminal, denied destinations sorted.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "egress: %d allowed, %d denied", s.Allowed, s.Denied)
	if s.Alerts > 0 {
		fmt.Fprintf(&b, ", %d alerts", s.Alerts)
	}
	if s.Dropped > 0 {
		fmt.Fprintf(&b, " (%d recorded only as counts: events_dropped)", s.Dropped)
	}
	keys := make([]string, 0, len(s.DeniedDestinations))
	for k := range s.DeniedDestinations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  denied %s (%d)", k, s.DeniedDestinations[k])
	}
	return b.String()
}

type summaryCounter struct {
	mu sync.Mutex
	s  Summary
}

func (c *summaryCounter) add(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ev.Kind == KindAlert {
		c.s.Alerts++
	}
	if ev.Verdict == VerdictAllowed {
		c.s.Allowed++
		return
	}
	c.s.Denied++
	dest := ev.Host
	if dest == "" {
		dest = ev.Addr
	}
	if ev.Port != 0 && ev.Kind != KindDNS {
		dest = fmt.Sprintf("%s:%d", dest, ev.Port)
	}
	if c.s.DeniedDestinations == nil {
		c.s.DeniedDestinations = map[string]int{}
	}
	c.s.DeniedDestinations[dest]++
}

func (c *summaryCounter) snapshot() Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.s
	out.DeniedDestinations = make(map[string]int, len(c.s.DeniedDestinations))
	for k, v := range c.s.DeniedDestinations {
		out.DeniedDestinations[k] = v
	}
	return out
}
