package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/github/autoscale"
)

// decisionRoll is how long one autoscaler decision trail stays open
// before it is sealed and the next decision opens another.
const decisionRoll = time.Hour

// decisionTrail writes one autoscaler's decisions (jobs queued, refused
// and started, runners created and deleted, webhook deliveries refused)
// to a signed audit trail of its own, autoscale-<name>-<unix ns>: opened
// by the first decision, sealed after decisionRoll and when the agent
// stops; one a crash leaves open is sealed by the next start's recovery,
// as a crashed job's is. The autoscaler's Events must return at once, so
// decisions queue for a writer; those a full queue turns away (a flood of
// forged deliveries) are counted in an events_dropped record.
type decisionTrail struct {
	au       *runner.Auditor
	runnerID string
	name     string
	log      hclog.Logger

	mu      sync.RWMutex // stopped and the closing of ch
	stopped bool
	dropped atomic.Int64
	ch      chan autoscale.Event
	done    chan struct{}
}

func newDecisionTrail(au *runner.Auditor, runnerID, name string, log hclog.Logger) *decisionTrail {
	d := &decisionTrail{au: au, runnerID: runnerID, name: name, log: log,
		ch: make(chan autoscale.Event, 1024), done: make(chan struct{})}
	go d.run()
	return d
}

// observe queues e; it never blocks.
func (d *decisionTrail) observe(e autoscale.Event) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.stopped {
		return
	}
	select {
	case d.ch <- e:
	default:
		d.dropped.Add(1)
	}
}

// stop writes what is queued, seals the trail and returns.
func (d *decisionTrail) stop() {
	d.mu.Lock()
	if !d.stopped {
		d.stopped = true
		close(d.ch)
	}
	d.mu.Unlock()
	<-d.done
}

func (d *decisionTrail) run() {
	defer close(d.done)
	ctx := context.Background()
	var t *audit.Trail
	var opened time.Time
	seal := func(reason string) {
		if t == nil {
			return
		}
		_, err := t.Seal(ctx, reason)
		if cerr := t.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			d.log.Error("sealing the autoscaler's audit trail", "autoscale", d.name, "error", err)
		}
		t = nil
	}
	for e := range d.ch {
		if t != nil && time.Since(opened) >= decisionRoll {
			seal("rolled after " + decisionRoll.String())
		}
		if t == nil {
			var err error
			if t, err = d.au.OpenOwn(d.runnerID, runner.OwnTrailAutoscale, d.name); err != nil {
				d.log.Error("opening the autoscaler's audit trail; its decisions are in the log only", "autoscale", d.name, "error", err)
				t = nil
				continue
			}
			opened = time.Now()
		}
		if n := d.dropped.Swap(0); n > 0 {
			ev := audit.NewEventsDropped(map[string]int64{"autoscale_decision": n}, "the decision queue was full")
			if _, err := t.Append(ctx, ev.Type, ev.Fields); err != nil {
				d.log.Error("recording dropped autoscaler decisions", "autoscale", d.name, "error", err)
			}
		}
		if _, err := t.Append(ctx, audit.EventType("autoscale_"+string(e.Type)), decisionFields(d.name, e)); err != nil {
			d.log.Error("recording an autoscaler decision", "autoscale", d.name, "type", e.Type, "error", err)
		}
	}
	seal("agent stopped")
}

// decisionFields are an autoscaler event's record fields (it never holds
// a token or a JIT config).
func decisionFields(name string, e autoscale.Event) audit.Fields {
	f := audit.Fields{"autoscale": name}
	add := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	add(audit.FieldRepo, e.Repo)
	add("jit_runner", e.Runner)
	add("webhook_delivery", e.Delivery)
	add(audit.FieldReason, e.Reason)
	if e.Job != 0 {
		f["github_job"] = e.Job
	}
	if e.Wait > 0 {
		f["wait_ms"] = e.Wait.Milliseconds()
	}
	return f
}
