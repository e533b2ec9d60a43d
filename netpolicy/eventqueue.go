package netpolicy

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// jobQueue holds one job's events between the data path and the sink. It
// is drained by one goroutine that hands the sink everything queued at once
// (group commit); a full queue makes the job's own handler wait up to wait
// (back-pressure) before the event is dropped and counted per kind.
type jobQueue struct {
	job      string
	ch       chan Event
	wait     time.Duration
	sink     EventSink
	batch    BatchSink
	maxBatch int
	total    *atomic.Int64 // the gateway's count of dropped events

	mu     sync.RWMutex // held for reading by push, for writing by close
	closed bool

	dmu      sync.Mutex
	dropped  map[string]int64 // not yet reported to the sink
	nDropped atomic.Int64     // ever, for the Summary

	done chan struct{}
}

func newJobQueue(job string, sink EventSink, size int, wait time.Duration, total *atomic.Int64) *jobQueue {
	q := &jobQueue{
		job: job, ch: make(chan Event, size), wait: wait, sink: sink,
		maxBatch: min(size, 4096), total: total, done: make(chan struct{}),
	}
	if b, ok := sink.(BatchSink); ok {
		q.batch = b
	}
	go q.run()
	return q
}

// push queues ev, waiting up to q.wait for room; it never blocks longer.
func (q *jobQueue) push(ev Event) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		q.drop(ev.Kind, false)
		return
	}
	select {
	case q.ch <- ev:
		return
	default:
	}
	t := time.NewTimer(q.wait)
	defer t.Stop()
	select {
	case q.ch <- ev:
	case <-t.C:
		q.drop(ev.Kind, true)
	}
}

// drop counts a lost event; report says whether the sink will still hear
// of it (not after close: the job's trail is being sealed).
func (q *jobQueue) drop(kind string, report bool) {
	q.total.Add(1)
	if !report {
		return
	}
	q.nDropped.Add(1)
	q.dmu.Lock()
	if q.dropped == nil {
		q.dropped = map[string]int64{}
	}
	q.dropped[kind]++
	q.dmu.Unlock()
}

// takeDropped returns a KindDropped event for the drops not yet reported.
func (q *jobQueue) takeDropped() (Event, bool) {
	q.dmu.Lock()
	defer q.dmu.Unlock()
	if len(q.dropped) == 0 {
		return Event{}, false
	}
	d := maps.Clone(q.dropped)
	clear(q.dropped)
	return Event{Job: q.job, Time: time.Now(), Kind: KindDropped,
		Reason: "the job produced events faster than they could be recorded", Dropped: d}, true
}

func (q *jobQueue) run() {
	defer close(q.done)
	buf := make([]Event, 0, q.maxBatch)
	for ev := range q.ch {
		buf = append(buf[:0], ev)
	fill:
		for len(buf) < q.maxBatch {
			select {
			case next, ok := <-q.ch:
				if !ok {
					break fill
				}
				buf = append(buf, next)
			default:
				break fill
			}
		}
		if d, ok := q.takeDropped(); ok {
			buf = append(buf, d)
		}
		q.deliver(buf)
	}
	if d, ok := q.takeDropped(); ok {
		q.deliver([]Event{d})
	}
}

func (q *jobQueue) deliver(evs []Event) {
	switch {
	case q.batch != nil:
		q.batch.EmitBatch(evs)
	case q.sink != nil:
		for _, ev := range evs {
			q.sink.Emit(ev)
		}
	}
}

// close stops accepting events and returns once the sink has seen every
// queued one (and the count of any dropped).
func (q *jobQueue) close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
	q.mu.Unlock()
	<-q.done
}
