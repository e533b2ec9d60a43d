package mask

import (
	"bytes"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// reference masks text as one piece, directly from the rules: every
// occurrence of a value pattern, every token (prefix plus a body of at least
// minBody bytes), and a trailing prefix of a value pattern of at least
// closePartialMin bytes are marked; overlapping marks merge; each merged
// region becomes one Replacement.
func reference(pats []pattern, text []byte) (string, int) {
	type iv struct{ start, end int }
	var ivs []iv
	for _, p := range pats {
		if p.prefix < 0 {
			for i := 0; i+len(p.text) <= len(text); i++ {
				if string(text[i:i+len(p.text)]) == p.text {
					ivs = append(ivs, iv{i, i + len(p.text)})
				}
			}
			continue
		}
		t := tokenPrefixes[p.prefix]
		for i := 0; i+len(t.prefix) <= len(text); i++ {
			if string(text[i:i+len(t.prefix)]) != t.prefix {
				continue
			}
			j := i + len(t.prefix)
			for j < len(text) && t.body.has(text[j]) {
				j++
			}
			if j-(i+len(t.prefix)) >= t.minBody {
				ivs = append(ivs, iv{i, j})
			}
		}
	}
	longest := 0
	for _, p := range pats {
		longest = max(longest, len(p.text))
	}
	for l := min(len(text), longest); l >= closePartialMin; l-- {
		tail := string(text[len(text)-l:])
		found := false
		for _, p := range pats {
			if p.prefix < 0 && strings.HasPrefix(p.text, tail) {
				found = true
				break
			}
		}
		if found {
			ivs = append(ivs, iv{len(text) - l, len(text)})
			break
		}
	}
	slices.SortFunc(ivs, func(a, b iv) int { return a.start - b.start })
	var merged []iv
	for _, x := range ivs {
		if n := len(merged); n > 0 && x.start < merged[n-1].end {
			merged[n-1].end = max(merged[n-1].end, x.end)
			continue
		}
		merged = append(merged, x)
	}
	var b strings.Builder
	at := 0
	for _, x := range merged {
		b.Write(text[at:x.start])
		b.WriteString(Replacement)
		at = x.end
	}
	b.Write(text[at:])
	return b.String(), len(merged)
}

// writeSplit writes text to m in pieces whose sizes come from sizes (cycled;
// 0 means an empty write), then closes m.
func writeSplit(t testing.TB, m *Writer, text []byte, sizes []int) {
	t.Helper()
	for i := 0; len(text) > 0; i++ {
		n := len(text)
		if len(sizes) > 0 {
			n = min(sizes[i%len(sizes)], len(text))
		}
		got, err := m.Write(text[:n])
		if err != nil || got != n {
			t.Fatalf("Write(%d bytes) = %d, %v, want %d, nil", n, got, err, n)
		}
		text = text[n:]
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
}

// withoutReplacements returns out with every Replacement turned into a byte
// that does not occur in value, so that a value found in the result lies in
// unmasked input bytes only.
func withoutReplacements(out, value string) (string, bool) {
	for b := 0; b < 256; b++ {
		if strings.IndexByte(value, byte(b)) < 0 {
			return strings.ReplaceAll(out, Replacement, string([]byte{byte(b)})), true
		}
	}
	return "", false
}

func TestMaskMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tokens := []string{"ghp_", "glpat-", "AKIA", "xoxb-", "sk_live_", "github_pat_"}
	for iter := range 400 {
		alphabet := "ab"
		if iter%2 == 1 {
			alphabet = "abc"
		}
		randStr := func(n int) string {
			b := make([]byte, n)
			for i := range b {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
			return string(b)
		}
		values := make([]string, 1+rng.IntN(4))
		for i := range values {
			values[i] = randStr(MinLength + rng.IntN(5))
		}
		// Values built from each other overlap often.
		if len(values) > 1 && rng.IntN(2) == 0 {
			values[1] = values[0][len(values[0])/2:] + randStr(MinLength/2+1)
		}
		var text strings.Builder
		pieces := rng.IntN(30)
		long := iter%5 == 4 // long texts and writes: the lanes of scan
		if long {
			pieces = 300 + rng.IntN(600)
		}
		for range pieces {
			switch r := rng.IntN(10); {
			case r < 4:
				text.WriteString(randStr(rng.IntN(6)))
			case r < 7:
				v := values[rng.IntN(len(values))]
				if rng.IntN(3) == 0 {
					v = v[:rng.IntN(len(v))] // a partial value
				}
				text.WriteString(v)
			case r < 8:
				vs := variants(values[rng.IntN(len(values))])
				text.WriteString(vs[rng.IntN(len(vs))])
			case r < 9:
				text.WriteString(tokens[rng.IntN(len(tokens))])
				text.WriteString(strings.ToUpper(randStr(rng.IntN(20))))
			default:
				text.WriteString(" x\n")
			}
		}
		sizes := make([]int, 1+rng.IntN(5))
		for i := range sizes {
			sizes[i] = rng.IntN(12)
			if rng.IntN(3) == 0 {
				sizes[i] = 1
			}
		}
		if slices.Max(sizes) == 0 {
			sizes[0] = 1
		}
		if long {
			sizes = []int{laneMin + rng.IntN(3000), rng.IntN(40), 4 * laneMin}
		}

		var out bytes.Buffer
		m := New(&out, values...)
		if iter%3 == 0 {
			// Mostly sparse states: exercise the slow path.
			m.sc.a = build(m.pats, 1+rng.IntN(4*int(m.sc.a.classes)))
		}
		in := text.String()
		writeSplit(t, m, []byte(in), sizes)
		want, hits := reference(m.pats, []byte(in))
		if out.String() != want {
			t.Fatalf("values %q, splits %v:\nMask(%q)\n = %q\nwant %q", values, sizes, in, out.String(), want)
		}
		if m.Hits() != hits {
			t.Errorf("values %q: Mask(%q): Hits() = %d, want %d", values, in, m.Hits(), hits)
		}
		for _, v := range values {
			if s, ok := withoutReplacements(out.String(), v); ok && strings.Contains(s, v) {
				t.Fatalf("Mask(%q) = %q leaks %q", in, out.String(), v)
			}
		}
		if got := m.MaskString(in); got != want {
			t.Fatalf("MaskString(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzMask(f *testing.F) {
	f.Add("supersecret", []byte("a supersecret b super"), []byte{1, 3, 0, 7})
	f.Add("abababab", []byte("abababababababx"), []byte{1})
	f.Add("0123456789", bytes.Repeat([]byte("x 0123456789 ghp_abc 01234"), 40), []byte{0xff, 3})
	f.Fuzz(func(t *testing.T, value string, text, splits []byte) {
		if len(value) < MinLength || len(value) > 64 || len(text) > 1024 {
			return
		}
		sizes := make([]int, len(splits))
		for i, s := range splits {
			sizes[i] = int(s % 32)
			if s >= 0xf0 {
				sizes[i] = laneMin + int(s-0xf0)*64 // long writes: the lanes of scan
			}
		}
		if len(sizes) > 0 && slices.Max(sizes) == 0 {
			sizes[0] = 1
		}
		var out bytes.Buffer
		m := New(&out, value)
		if len(splits) > 0 && splits[0]&1 == 1 {
			m.sc.a = build(m.pats, int(splits[0])*int(m.sc.a.classes)/8)
		}
		writeSplit(t, m, text, sizes)
		want, _ := reference(m.pats, text)
		if out.String() != want {
			t.Fatalf("Mask(%q) with value %q, splits %v = %q, want %q", text, value, sizes, out.String(), want)
		}
		for _, v := range variants(value) {
			if s, ok := withoutReplacements(out.String(), v); ok && strings.Contains(s, v) {
				t.Fatalf("Mask(%q) = %q leaks %q", text, out.String(), v)
			}
		}
	})
}

// TestReferenceSanity checks the reference itself on hand-made cases.
func TestReferenceSanity(t *testing.T) {
	m := New(io.Discard, "abababab")
	got, hits := reference(m.pats, []byte("abababababx"))
	if got != "[MASKED]x" || hits != 1 {
		t.Errorf("reference(abababababx) = %q, %d, want %q, 1", got, hits, "[MASKED]x")
	}
}

// TestScanLanes checks the interleaved scan against the one-lane scan: same
// events in the same order, same final state, from any start state and with
// any share of sparse states.
func TestScanLanes(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for iter := range 300 {
		var pats []pattern
		for range 1 + rng.IntN(20) {
			b := make([]byte, 1+rng.IntN(24))
			for i := range b {
				b[i] = "abc"[rng.IntN(3)]
			}
			pats = append(pats, pattern{text: string(b), prefix: -1})
		}
		akia := slices.IndexFunc(tokenPrefixes, func(tp tokenPrefix) bool { return tp.prefix == "AKIA" })
		pats = append(pats, pattern{text: "AKIA", prefix: akia})
		full := build(pats, 1<<20)
		a := build(pats, 1+rng.IntN(8*int(full.classes)))
		if iter%4 == 0 {
			a = full
		}
		text := make([]byte, laneMin+rng.IntN(5000))
		for i := range text {
			text[i] = "abcAKI"[rng.IntN(6)]
		}
		// Start from the state after a random prefix, often a sparse one.
		start, _ := a.scan1(0, text[:rng.IntN(40)], 0, nil)
		var scratch [2][]event
		gotCode, gotEv := a.scan(start, text, 100, nil, &scratch)
		wantCode, wantEv := a.scan1(start, text, 100, nil)
		if gotCode != wantCode || !slices.Equal(gotEv, wantEv) {
			t.Fatalf("iteration %d: scan = %d, %d events, want %d, %d events", iter, gotCode, len(gotEv), wantCode, len(wantEv))
		}
	}
}
