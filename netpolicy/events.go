package netpolicy

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
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
}

// EventSink receives gateway events. Emit is called from a single goroutine
// of the gateway, in order; it may block (the data path never waits for it:
// events are buffered and dropped, and counted, when the buffer is full).
type EventSink interface {
	Emit(Event)
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

// eventQueue decouples the data path from the sink.
type eventQueue struct {
	ch      chan Event
	sink    EventSink
	dropped atomic.Int64
	done    chan struct{}
	mu      sync.RWMutex
	closed  bool
}

func newEventQueue(sink EventSink, size int) *eventQueue {
	q := &eventQueue{ch: make(chan Event, size), sink: sink, done: make(chan struct{})}
	go func() {
		defer close(q.done)
		for ev := range q.ch {
			if q.sink != nil {
				q.sink.Emit(ev)
			}
		}
	}()
	return q
}

func (q *eventQueue) push(ev Event) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		q.dropped.Add(1)
		return
	}
	select {
	case q.ch <- ev:
	default:
		q.dropped.Add(1)
	}
}

// close stops accepting events and waits until the sink has seen the rest.
func (q *eventQueue) close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
	q.mu.Unlock()
	<-q.done
}
