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
// (back-pressure) before the event is dropped and counted per kind. It
// holds at most size events and grows with use: a job that records a few
// events costs a few, not a buffer of size made when it registers (8192
// events were 2 MB per job, zeroed while the gateway's lock was held).
type jobQueue struct {
	job      string
	size     int
	wait     time.Duration
	sink     EventSink
	batch    BatchSink
	maxBatch int
	total    *atomic.Int64 // the gateway's count of dropped events

	cmu    sync.RWMutex // held for reading by push, for writing by close
	closed bool

	mu     sync.Mutex
	queued []Event       // oldest first, at most size
	room   chan struct{} // closed when run takes the queue; nil until a push waits
	ended  bool          // close was called: run drains and returns
	ready  chan struct{} // 1 slot: there is something for run to look at

	dmu      sync.Mutex
	dropped  map[string]int64 // not yet reported to the sink
	nDropped atomic.Int64     // ever, for the Summary

	done chan struct{}
}

func newJobQueue(job string, sink EventSink, size int, wait time.Duration, total *atomic.Int64) *jobQueue {
	q := &jobQueue{
		job: job, size: max(size, 1), wait: wait, sink: sink,
		maxBatch: min(max(size, 1), 4096), total: total, ready: make(chan struct{}, 1), done: make(chan struct{}),
	}
	if b, ok := sink.(BatchSink); ok {
		q.batch = b
	}
	go q.run()
	return q
}

// wake tells run there is something to look at.
func (q *jobQueue) wake() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// push queues ev, waiting up to q.wait for room; it never blocks longer.
func (q *jobQueue) push(ev Event) {
	q.cmu.RLock()
	defer q.cmu.RUnlock()
	if q.closed {
		q.drop(ev.Kind, false)
		return
	}
	var timeout <-chan time.Time
	for {
		q.mu.Lock()
		if len(q.queued) < q.size {
			q.queued = append(q.queued, ev)
			q.mu.Unlock()
			q.wake()
			return
		}
		if q.room == nil {
			q.room = make(chan struct{})
		}
		room := q.room
		q.mu.Unlock()
		if timeout == nil {
			t := time.NewTimer(q.wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-room:
		case <-timeout:
			q.drop(ev.Kind, true)
			return
		}
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
	var spare []Event
	for {
		q.mu.Lock()
		for len(q.queued) == 0 && !q.ended {
			q.mu.Unlock()
			<-q.ready
			q.mu.Lock()
		}
		taken := q.queued
		q.queued = spare[:0]
		if q.room != nil {
			close(q.room)
			q.room = nil
		}
		q.mu.Unlock()
		if len(taken) == 0 {
			break // ended, and nothing left
		}
		for rest := taken; len(rest) > 0; {
			n := min(len(rest), q.maxBatch)
			evs := rest[:n:n]
			if n == len(rest) {
				if d, ok := q.takeDropped(); ok {
					evs = append(evs, d)
				}
			}
			q.deliver(evs)
			rest = rest[n:]
		}
		clear(taken) // no strings kept alive by a spare slice
		spare = taken
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
	q.cmu.Lock()
	if !q.closed {
		q.closed = true
		q.mu.Lock()
		q.ended = true
		q.mu.Unlock()
		q.wake()
	}
	q.cmu.Unlock()
	<-q.done
}
