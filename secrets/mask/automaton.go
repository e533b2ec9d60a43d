package mask

// The automaton is an Aho-Corasick matcher compiled into a byte-class
// compressed DFA. It is immutable once built; a Writer swaps in a new one
// when values are added.
//
// States are numbered so that the scan loop needs one table lookup and one
// comparison per byte:
//
//	ids [0, dense0)       dense states without output (the root is 0)
//	ids [dense0, dense)   dense states that end a pattern (a value or a token prefix)
//	ids [dense, n)        sparse states: deep trie nodes, kept as sibling lists
//
// A dense state's code is id*classes (its row offset in trans); a sparse
// state's code is dense*classes + (id - dense). Every code at or above
// dense0*classes needs attention (an output, or a sparse transition), which
// is rare in ordinary text. Long inputs are scanned in two interleaved lanes
// (see scan).

// denseBudget bounds the dense table (entries of 4 bytes, so 2 MiB). States
// beyond it, in BFS order, are deep ones, visited only while the text
// really follows a pattern for several bytes; a large value (a PEM key and
// its encodings) thus costs memory in proportion to its length, not to its
// length times the number of byte classes.
const denseBudget = 1 << 19

type pattern struct {
	text   string
	prefix int // index into tokenPrefixes, or -1 for a value (or an encoding of one)
}

type automaton struct {
	classes  uint32
	cls      [256]uint8
	trans    []uint32 // dense rows: trans[code+class] = next code
	thresh   uint32   // dense0 * classes
	denseEnd uint32   // dense * classes
	dense    int32

	// Per state id.
	depth    []int32 // length of the state's string (longest pattern prefix ending here)
	valDepth []int32 // longest suffix of the state's string that is a prefix of a value pattern
	valLen   []int32 // longest value pattern ending here, 0 if none
	output   []bool  // valLen > 0 or a token prefix ends here
	fail     []int32
	// Sparse states' children (sibling lists, new ids).
	child []int32
	sib   []int32
	label []byte

	prefixes map[int32][]uint8 // state id -> token prefixes ending here
	maxLen   int               // longest pattern
}

// event is a state with output reached at stream offset end (exclusive).
type event struct {
	end int64
	id  int32
}

func build(patterns []pattern, budget int) *automaton {
	// Trie with first-child/next-sibling lists.
	type node struct {
		child, sib, fail int32
		depth            int32
		valLen           int32
		onValue          bool // the node's string is a prefix of a value pattern
		b                byte
	}
	nodes := []node{{child: -1, sib: -1}}
	findChild := func(x int32, b byte) int32 {
		for ch := nodes[x].child; ch >= 0; ch = nodes[ch].sib {
			if nodes[ch].b == b {
				return ch
			}
		}
		return -1
	}
	prefixEnds := map[int32][]uint8{}
	var used [256]bool
	maxLen := 0
	for _, p := range patterns {
		if p.text == "" {
			continue
		}
		maxLen = max(maxLen, len(p.text))
		cur := int32(0)
		for i := 0; i < len(p.text); i++ {
			c := p.text[i]
			used[c] = true
			next := findChild(cur, c)
			if next < 0 {
				next = int32(len(nodes))
				nodes = append(nodes, node{child: -1, sib: nodes[cur].child, depth: int32(i + 1), b: c})
				nodes[cur].child = next
			}
			if p.prefix < 0 {
				nodes[next].onValue = true
			}
			cur = next
		}
		if p.prefix < 0 {
			nodes[cur].valLen = int32(len(p.text))
		} else if !containsU8(prefixEnds[cur], uint8(p.prefix)) {
			prefixEnds[cur] = append(prefixEnds[cur], uint8(p.prefix))
		}
	}

	// Byte classes: every byte used by a pattern gets its own class, the
	// rest share class 0.
	a := &automaton{prefixes: map[int32][]uint8{}, maxLen: maxLen}
	k := uint32(1)
	for b := 0; b < 256; b++ {
		if used[b] {
			a.cls[b] = uint8(k)
			k++
		}
	}
	// k <= 256 always: 255 used bytes leave one for class 0, and if all 256
	// are used no byte needs class 0.
	if k > 256 {
		k = 256
		for b := 0; b < 256; b++ {
			a.cls[b] = uint8(b)
		}
	}
	a.classes = k

	// BFS: fail links, value lengths, value depths, prefix outputs.
	n := len(nodes)
	order := make([]int32, 0, n)
	order = append(order, 0)
	valDepth := make([]int32, n)
	out := make([]bool, n)
	prefOut := map[int32][]uint8{}
	for qi := 0; qi < len(order); qi++ {
		x := order[qi]
		for ch := nodes[x].child; ch >= 0; ch = nodes[ch].sib {
			order = append(order, ch)
			f := int32(0)
			if x != 0 {
				for y := nodes[x].fail; ; y = nodes[y].fail {
					if g := findChild(y, nodes[ch].b); g >= 0 {
						f = g
						break
					}
					if y == 0 {
						break
					}
				}
			}
			nodes[ch].fail = f
			if nodes[ch].valLen == 0 {
				nodes[ch].valLen = nodes[f].valLen
			}
			if nodes[ch].onValue {
				valDepth[ch] = nodes[ch].depth
			} else {
				valDepth[ch] = valDepth[f]
			}
			var po []uint8
			po = append(po, prefixEnds[ch]...)
			for _, k := range prefOut[f] {
				if !containsU8(po, k) {
					po = append(po, k)
				}
			}
			if len(po) > 0 {
				prefOut[ch] = po
			}
			out[ch] = nodes[ch].valLen > 0 || len(po) > 0
		}
	}

	// Dense set: a prefix of BFS order (so a dense state's fail is dense).
	dense := min(n, max(1, budget/int(k)))
	perm := make([]int32, n) // old id -> new id
	next := int32(0)
	for _, x := range order[:dense] {
		if !out[x] {
			perm[x] = next
			next++
		}
	}
	dense0 := next
	for _, x := range order[:dense] {
		if out[x] {
			perm[x] = next
			next++
		}
	}
	for _, x := range order[dense:] {
		perm[x] = next
		next++
	}
	a.dense = int32(dense)
	a.thresh = uint32(dense0) * k
	a.denseEnd = uint32(dense) * k

	code := func(old int32) uint32 {
		id := perm[old]
		if id < int32(dense) {
			return uint32(id) * k
		}
		return uint32(dense)*k + uint32(id-int32(dense))
	}

	a.depth = make([]int32, n)
	a.valDepth = make([]int32, n)
	a.valLen = make([]int32, n)
	a.output = make([]bool, n)
	a.fail = make([]int32, n)
	a.child = make([]int32, n)
	a.sib = make([]int32, n)
	a.label = make([]byte, n)
	for old := range nodes {
		id := perm[old]
		nd := &nodes[old]
		a.depth[id] = nd.depth
		a.valDepth[id] = valDepth[old]
		a.valLen[id] = nd.valLen
		a.output[id] = out[old]
		a.fail[id] = perm[nd.fail]
		a.label[id] = nd.b
		a.child[id], a.sib[id] = -1, -1
		if nd.child >= 0 {
			a.child[id] = perm[nd.child]
		}
		if nd.sib >= 0 {
			a.sib[id] = perm[nd.sib]
		}
		if po := prefOut[int32(old)]; po != nil {
			a.prefixes[id] = po
		}
	}

	// Dense rows in BFS order: a row is its fail state's row with the
	// node's own children written over it.
	a.trans = make([]uint32, dense*int(k))
	for _, x := range order[:dense] {
		row := a.trans[perm[x]*int32(k):][:k]
		if x != 0 {
			copy(row, a.trans[perm[nodes[x].fail]*int32(k):][:k])
		}
		for ch := nodes[x].child; ch >= 0; ch = nodes[ch].sib {
			row[a.cls[nodes[ch].b]] = code(ch)
		}
	}
	return a
}

func containsU8(s []uint8, v uint8) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// id returns the state id of a code.
func (a *automaton) id(code uint32) int32 {
	if code < a.denseEnd {
		return int32(code / a.classes)
	}
	return a.dense + int32(code-a.denseEnd)
}

// code returns the code of a state id.
func (a *automaton) code(id int32) uint32 {
	if id < a.dense {
		return uint32(id) * a.classes
	}
	return a.denseEnd + uint32(id-a.dense)
}

// step is the transition function from any state; the scan loop uses it
// only for sparse states.
func (a *automaton) step(id int32, b byte) uint32 {
	for {
		if id < a.dense {
			return a.trans[uint32(id)*a.classes+uint32(a.cls[b])]
		}
		for ch := a.child[id]; ch >= 0; ch = a.sib[ch] {
			if a.label[ch] == b {
				return a.code(ch)
			}
		}
		id = a.fail[id]
	}
}

// laneMin is the shortest input that scan splits into lanes.
const laneMin = 768

// scan runs the DFA over p from state code, appending an event for every
// state with output to ev. base is the stream offset of p[0]. It returns the
// final state code. scratch holds reusable event slices.
//
// Long inputs are scanned as three interleaved lanes, which hides the
// latency of the dependent table lookups: lane 0 scans the first third from
// code; lanes 1 and 2 start from the root maxLen bytes before their third.
// An Aho-Corasick state is the longest suffix of the text that is a pattern
// prefix, never longer than maxLen, so a lane is in the true state from the
// start of its third on; its events before that belong to the previous lane
// and are dropped.
func (a *automaton) scan(code uint32, p []byte, base int64, ev []event, scratch *[2][]event) (uint32, []event) {
	w := a.maxLen
	if len(p) < laneMin || len(p) < 6*w {
		return a.scan1(code, p, base, ev)
	}
	n := len(p) / 3
	offB, offC := n-w, 2*n-w
	lanes := [3]lane{
		{p: p[:n], base: base, ev: ev, code: code},
		{p: p[offB : 2*n], base: base + int64(offB), ev: scratch[0][:0]},
		{p: p[offC:], base: base + int64(offC), ev: scratch[1][:0]},
	}
	i := 0
	inStep := true
	if code >= a.denseEnd {
		l := &lanes[0]
		l.code, l.i, l.ev = a.sparseRun(code, l.p, 0, l.base, l.ev)
		i, inStep = a.syncLanes(&lanes, l.i)
	}
	ca, cb, cc := lanes[0].code, lanes[1].code, lanes[2].code
	if inStep {
		// Every lane has at least n bytes. Only the codes, the index and
		// the table stay live here; the rare path works on lanes.
		trans := a.trans
		cls := &a.cls
		th := a.thresh
		for i < n {
			ca = trans[ca+uint32(cls[p[i]])]
			cb = trans[cb+uint32(cls[p[offB+i]])]
			cc = trans[cc+uint32(cls[p[offC+i]])]
			i++
			if ca >= th || cb >= th || cc >= th {
				lanes[0].code, lanes[1].code, lanes[2].code = ca, cb, cc
				i, inStep = a.attendLanes(&lanes, i)
				ca, cb, cc = lanes[0].code, lanes[1].code, lanes[2].code
				if !inStep {
					break
				}
			}
		}
		if inStep {
			lanes[0].code, lanes[1].code, lanes[2].code = ca, cb, cc
			for k := range lanes {
				lanes[k].i = i
			}
		}
	}
	for k := range lanes {
		l := &lanes[k]
		l.code, l.ev = a.scan1(l.code, l.p[l.i:], l.base+int64(l.i), l.ev)
	}
	ev = lanes[0].ev
	for k := 1; k < 3; k++ {
		from := base + int64(k*n)
		for _, e := range lanes[k].ev {
			if e.end > from {
				ev = append(ev, e)
			}
		}
	}
	scratch[0], scratch[1] = lanes[1].ev, lanes[2].ev
	return lanes[2].code, ev
}

// scan1 is scan in one lane.
func (a *automaton) scan1(code uint32, p []byte, base int64, ev []event) (uint32, []event) {
	i := 0
	if code >= a.denseEnd {
		code, i, ev = a.sparseRun(code, p, 0, base, ev)
	}
	trans := a.trans
	cls := &a.cls
	th := a.thresh
	for i < len(p) {
		code = trans[code+uint32(cls[p[i]])]
		i++
		if code >= th {
			code, i, ev = a.attend(code, p, i, base, ev)
		}
	}
	return code, ev
}

// attend handles a code at or above thresh, reached by consuming p[i-1]:
// it records the output and steps on through p while the state is sparse.
func (a *automaton) attend(code uint32, p []byte, i int, base int64, ev []event) (uint32, int, []event) {
	if code < a.denseEnd {
		return code, i, append(ev, event{end: base + int64(i), id: int32(code / a.classes)})
	}
	id := a.dense + int32(code-a.denseEnd)
	if a.output[id] {
		ev = append(ev, event{end: base + int64(i), id: id})
	}
	return a.sparseRun(code, p, i, base, ev)
}

// sparseRun steps through p from index i while the state is sparse.
func (a *automaton) sparseRun(code uint32, p []byte, i int, base int64, ev []event) (uint32, int, []event) {
	for code >= a.denseEnd && i < len(p) {
		id := a.dense + int32(code-a.denseEnd)
		code = a.step(id, p[i])
		i++
		nid := a.id(code)
		if a.output[nid] {
			ev = append(ev, event{end: base + int64(i), id: nid})
		}
	}
	return code, i, ev
}

// lane is one lane of scan.
type lane struct {
	p    []byte
	base int64
	ev   []event
	code uint32
	i    int
}

// attendLanes handles the lanes whose code needs attention after consuming
// byte i-1, then brings the lanes back in step.
//
//go:noinline
func (a *automaton) attendLanes(lanes *[3]lane, i int) (int, bool) {
	target := i
	for k := range lanes {
		l := &lanes[k]
		l.i = i
		if l.code >= a.thresh {
			l.code, l.i, l.ev = a.attend(l.code, l.p, l.i, l.base, l.ev)
		}
		target = max(target, l.i)
	}
	return a.syncLanes(lanes, target)
}

// syncLanes steps the lanes that are behind until all are at the same index
// (at least target) in a dense state, and returns it. It reports false if a
// lane reached its end first; each lane's code and index are then in lanes.
func (a *automaton) syncLanes(lanes *[3]lane, target int) (int, bool) {
	for {
		done := true
		for k := range lanes {
			l := &lanes[k]
			for l.i < target {
				if l.i >= len(l.p) {
					return 0, false
				}
				l.code = a.stepCode(l.code, l.p[l.i])
				l.i++
				if l.code >= a.thresh {
					l.code, l.i, l.ev = a.attend(l.code, l.p, l.i, l.base, l.ev)
				}
			}
			if l.i > target {
				target = l.i
				done = false
			}
			if l.i >= len(l.p) || l.code >= a.denseEnd {
				return 0, false
			}
		}
		if done {
			return target, true
		}
	}
}

// stepCode is one transition from any code.
func (a *automaton) stepCode(code uint32, b byte) uint32 {
	if code < a.denseEnd {
		return a.trans[code+uint32(a.cls[b])]
	}
	return a.step(a.dense+int32(code-a.denseEnd), b)
}
