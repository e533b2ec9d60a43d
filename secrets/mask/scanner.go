package mask

// span is a region of the stream to replace, [start, end) in stream
// offsets. shown records that Replacement has been written for it: output
// may have advanced into (or through) the span while it can still grow.
type span struct {
	start, end int64
	shown      bool
}

// candidate is a token prefix whose body is still being read.
type candidate struct {
	start int64 // offset of the prefix
	kind  int   // index into tokenPrefixes
	body  int   // body bytes seen so far
}

func (c *candidate) confirmed() bool { return c.body >= tokenPrefixes[c.kind].minBody }

// scanner is the streaming state of one output stream. It is not safe for
// concurrent use; Writer serialises access.
//
// Offsets are positions in the stream. Invariants between calls:
//   - emitted <= pos: bytes before emitted have been output;
//   - buf holds the bytes [pos-len(buf), pos); it starts at the lowest offset
//     at which a match may still start, which is <= emitted;
//   - spans are sorted and disjoint; all but a shown one that emitted has
//     reached are at or after emitted.
type scanner struct {
	a       *automaton
	state   uint32 // automaton code
	pos     int64
	emitted int64
	buf     []byte
	spans   []span
	cands   []candidate
	ev      []event
	evLanes [2][]event // scratch for the automaton's lanes
	out     []byte
	hits    int
}

// mask adds [start, end) to the spans, merging every span it overlaps.
// Adjacent spans stay separate.
func (s *scanner) mask(start, end int64) {
	sp := s.spans
	i := len(sp)
	for i > 0 && sp[i-1].end > start {
		i--
	}
	j := i
	merged := span{start: start, end: end}
	for j < len(sp) && sp[j].start < end {
		merged.start = min(merged.start, sp[j].start)
		merged.end = max(merged.end, sp[j].end)
		merged.shown = merged.shown || sp[j].shown
		j++
	}
	if i == len(sp) {
		s.spans = append(sp, merged)
		return
	}
	if j > i {
		sp[i] = merged
		s.spans = append(sp[:i+1], sp[j:]...)
		return
	}
	s.spans = append(sp, span{})
	copy(s.spans[i+1:], s.spans[i:])
	s.spans[i] = merged
}

// feed scans p, which follows the bytes already seen, and returns the output
// that can be released now. The result aliases p or the scanner's buffer and
// is valid until the next call.
func (s *scanner) feed(p []byte) []byte {
	pstart := s.pos
	end := pstart + int64(len(p))

	// Token bodies that were still open at the end of the previous write.
	var last candidate // the latest confirmed token, for skipping nested prefixes
	lastEnd := int64(-1)
	kept := s.cands[:0]
	for _, c := range s.cands {
		j := 0
		body := tokenPrefixes[c.kind].body
		for j < len(p) && body.has(p[j]) {
			j++
		}
		c.body += j
		if j < len(p) {
			if c.confirmed() {
				s.mask(c.start, pstart+int64(j))
				last, lastEnd = c, pstart+int64(j)
			}
			continue
		}
		if c.confirmed() {
			s.mask(c.start, end)
			last, lastEnd = c, end
		}
		kept = append(kept, c)
	}
	s.cands = kept

	s.state, s.ev = s.a.scan(s.state, p, pstart, s.ev[:0], &s.evLanes)
	s.pos = end

	for _, e := range s.ev {
		if vl := s.a.valLen[e.id]; vl > 0 {
			s.mask(e.end-int64(vl), e.end)
		}
		for _, k := range s.a.prefixes[e.id] {
			start := e.end - int64(len(tokenPrefixes[k].prefix))
			if lastEnd >= e.end && start >= last.start && prefixCovers[k][last.kind] {
				continue // inside a token that masks it whole
			}
			c := candidate{start: start, kind: int(k)}
			i := int(e.end - pstart)
			j := i
			body := tokenPrefixes[k].body
			for j < len(p) && body.has(p[j]) {
				j++
			}
			c.body = j - i
			if j < len(p) {
				if c.confirmed() {
					s.mask(start, pstart+int64(j))
					last, lastEnd = c, pstart+int64(j)
				}
				continue
			}
			if c.confirmed() {
				s.mask(start, end)
				last, lastEnd = c, end
			}
			s.cands = append(s.cands, c)
		}
	}
	return s.release(p, pstart, s.low())
}

// low is the lowest offset at which a match may still start: the start of
// the automaton's current partial match or of an unconfirmed token.
func (s *scanner) low() int64 {
	low := s.pos - int64(s.a.depth[s.a.id(s.state)])
	for _, c := range s.cands {
		if !c.confirmed() {
			low = min(low, c.start)
		}
	}
	return low
}

// release outputs the stream up to low (further if low is inside a span:
// the span's Replacement goes out now and the rest of it is swallowed),
// drops spans that can no longer grow, and keeps the bytes from low on. p
// is the latest input, starting at offset pstart; the bytes before it are in
// buf.
func (s *scanner) release(p []byte, pstart, low int64) []byte {
	boundary := low
	for _, sp := range s.spans {
		if sp.start <= low && low < sp.end {
			boundary = sp.end
			break
		}
		if sp.start > low {
			break
		}
	}
	boundary = max(boundary, s.emitted)

	var out []byte
	if s.emitted >= pstart && (len(s.spans) == 0 || s.spans[0].start >= boundary) {
		out = p[s.emitted-pstart : boundary-pstart]
		s.emitted = boundary
	} else {
		out = s.out[:0]
		for i := range s.spans {
			sp := &s.spans[i]
			if sp.start >= boundary {
				break
			}
			if sp.start > s.emitted {
				out = s.appendRange(out, p, pstart, s.emitted, sp.start)
				s.emitted = sp.start
			}
			if !sp.shown {
				out = append(out, Replacement...)
				sp.shown = true
				s.hits++
			}
			s.emitted = max(s.emitted, sp.end)
		}
		if boundary > s.emitted {
			out = s.appendRange(out, p, pstart, s.emitted, boundary)
			s.emitted = boundary
		}
		s.out = out
	}

	// Spans that end before low cannot grow any more.
	k := 0
	for k < len(s.spans) && s.spans[k].end < low {
		k++
	}
	if k > 0 {
		s.spans = append(s.spans[:0], s.spans[k:]...)
	}

	// Keep the bytes from low on.
	bufStart := pstart - int64(len(s.buf))
	if low >= pstart {
		s.buf = append(s.buf[:0], p[low-pstart:]...)
	} else {
		n := copy(s.buf, s.buf[low-bufStart:])
		s.buf = append(s.buf[:n], p...)
	}
	return out
}

// appendRange appends the stream bytes [from, to) to out; they are in buf
// (before pstart) and p.
func (s *scanner) appendRange(out, p []byte, pstart, from, to int64) []byte {
	if from < pstart {
		bufStart := pstart - int64(len(s.buf))
		out = append(out, s.buf[from-bufStart:min(to, pstart)-bufStart]...)
		from = pstart
	}
	if to > from {
		out = append(out, p[from-pstart:to-pstart]...)
	}
	return out
}

// finish ends the stream: open token bodies end here, a held-back prefix of
// a value of at least closePartialMin bytes is masked, and everything left
// is released.
func (s *scanner) finish() []byte {
	for _, c := range s.cands {
		if c.confirmed() {
			s.mask(c.start, s.pos)
		}
	}
	s.cands = s.cands[:0]
	if vd := int64(s.a.valDepth[s.a.id(s.state)]); vd >= closePartialMin {
		s.mask(s.pos-vd, s.pos)
	}
	out := s.release(nil, s.pos, s.pos)
	s.state = 0
	return out
}

// rebase switches to automaton a, rescanning the held-back bytes so that
// new values are masked in everything not yet output. Token candidates and
// spans carry over: the token table does not change.
func (s *scanner) rebase(a *automaton) {
	s.a = a
	start := s.pos - int64(len(s.buf))
	var ev []event
	s.state, ev = a.scan(0, s.buf, start, s.ev[:0], &s.evLanes)
	for _, e := range ev {
		if vl := a.valLen[e.id]; vl > 0 {
			s.mask(e.end-int64(vl), e.end)
		}
	}
	s.ev = ev[:0]
}
