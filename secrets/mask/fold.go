package mask

// Host names, DNS questions and other text a job may have case-folded (DNS
// is case-insensitive, and resolvers and the gateway lower-case names)
// cannot be masked by exact matching alone: a secret "AbCd1234" asked for
// as "abcd1234.example.test" would pass. MaskFold matches every registered
// value and its encodings ASCII-case-insensitively as well.

// foldAutomaton returns (building once per set of values) the automaton of
// the ASCII-lower-cased value patterns, or nil when there are none (m.mu
// held).
func (m *Writer) foldAutomaton() *automaton {
	if m.foldGen == len(m.pats) {
		return m.fold
	}
	var pats []pattern
	seen := map[string]bool{}
	for _, p := range m.pats {
		if p.prefix >= 0 {
			continue // token prefixes are case-sensitive by definition
		}
		low := asciiLower(p.text)
		if !seen[low] {
			seen[low] = true
			pats = append(pats, pattern{text: low, prefix: -1})
		}
	}
	m.fold = nil
	if len(pats) > 0 {
		m.fold = build(pats, denseBudget)
	}
	m.foldGen = len(m.pats)
	return m.fold
}

// MaskFold is MaskString with values (and their encodings) matched
// regardless of ASCII letter case, for host names, DNS questions, paths and
// any other field a job chose that may have been case-folded on the way.
// It is safe to call concurrently with Write.
func (m *Writer) MaskFold(s string) string {
	if s == "" {
		return s
	}
	m.mu.Lock()
	a := m.foldAutomaton()
	m.mu.Unlock()
	if a != nil {
		s = maskSpans(s, foldSpans(a, asciiLower(s)))
	}
	return m.MaskString(s)
}

// foldSpans returns the regions of p (already lower-cased) where a value
// pattern of a matches, merged, plus a trailing prefix of a value of at
// least closePartialMin bytes (as Close masks one).
func foldSpans(a *automaton, p string) []span {
	sc := scanner{a: a}
	state, ev := a.scan(0, []byte(p), 0, nil, &sc.evLanes)
	for _, e := range ev {
		if vl := a.valLen[e.id]; vl > 0 {
			sc.mask(e.end-int64(vl), e.end)
		}
	}
	if vd := int64(a.valDepth[a.id(state)]); vd >= closePartialMin {
		sc.mask(int64(len(p))-vd, int64(len(p)))
	}
	return sc.spans
}

// maskSpans replaces each span of s (same offsets as the lower-cased copy:
// ASCII folding keeps lengths) with Replacement.
func maskSpans(s string, spans []span) string {
	if len(spans) == 0 {
		return s
	}
	out := make([]byte, 0, len(s))
	at := int64(0)
	for _, sp := range spans {
		out = append(out, s[at:sp.start]...)
		out = append(out, Replacement...)
		at = sp.end
	}
	out = append(out, s[at:]...)
	return string(out)
}

// asciiLower lower-cases ASCII letters only, so offsets are preserved.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
