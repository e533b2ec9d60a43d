package netpolicy

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stutterSink takes batches, now and then slowly, and checks that each
// producer's events arrive in the order they were pushed.
type stutterSink struct {
	t       *testing.T
	mu      sync.Mutex
	got     int64
	dropped int64
	last    map[string]int // producer (Host) -> last sequence (Port) seen
	batches int
}

func (s *stutterSink) Emit(ev Event) { s.EmitBatch([]Event{ev}) }

func (s *stutterSink) EmitBatch(evs []Event) {
	s.mu.Lock()
	s.batches++
	slow := s.batches%7 == 0
	for _, ev := range evs {
		if ev.Kind == KindDropped {
			for _, n := range ev.Dropped {
				s.dropped += n
			}
			continue
		}
		s.got++
		if prev, ok := s.last[ev.Host]; ok && ev.Port <= prev {
			s.t.Errorf("producer %s: event %d after %d", ev.Host, ev.Port, prev)
		}
		s.last[ev.Host] = ev.Port
	}
	s.mu.Unlock()
	if slow {
		time.Sleep(2 * time.Millisecond)
	}
}

// Many producers against a sink that stutters and a queue small enough
// to fill: every event is delivered in its producer's order or counted
// as dropped and reported, close waits for all of it, and pushes after
// close are counted but not reported (the trail is being sealed).
func TestJobQueueDeliversOrCountsEveryEvent(t *testing.T) {
	for _, size := range []int{1, 16, 8192} {
		sink := &stutterSink{t: t, last: map[string]int{}}
		var total atomic.Int64
		q := newJobQueue("job-q", sink, size, 200*time.Microsecond, &total)
		const producers, each = 8, 2000
		var wg sync.WaitGroup
		for p := range producers {
			wg.Go(func() {
				host := string(rune('a' + p))
				for i := range each {
					q.push(Event{Kind: KindDNS, Host: host, Port: i})
				}
			})
		}
		wg.Wait()
		q.close()
		sink.mu.Lock()
		got, dropped := sink.got, sink.dropped
		sink.mu.Unlock()
		if got+dropped != producers*each || dropped != q.nDropped.Load() || total.Load() != dropped {
			t.Errorf("size %d: sink got %d and %d reported dropped (queue counts %d, gateway %d); want %d in all",
				size, got, dropped, q.nDropped.Load(), total.Load(), producers*each)
		}
		q.push(Event{Kind: KindDNS, Host: "late"})
		if total.Load() != dropped+1 || q.nDropped.Load() != dropped {
			t.Errorf("size %d: a push after close: gateway counts %d, queue %d; want %d and %d", size, total.Load(), q.nDropped.Load(), dropped+1, dropped)
		}
	}
}
