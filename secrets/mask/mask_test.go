package mask

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// maskAll writes text to a new Writer for values in pieces of the given
// sizes (nil: one Write), closes it and returns the output.
func maskAll(t *testing.T, values []string, text string, sizes []int) string {
	t.Helper()
	var out bytes.Buffer
	m := New(&out, values...)
	writeSplit(t, m, []byte(text), sizes)
	return out.String()
}

// splits are the write patterns every table case runs under.
var splits = map[string][]int{
	"whole":  nil,
	"bytes":  {1},
	"pairs":  {2},
	"mixed":  {3, 1, 0, 5, 2},
	"sevens": {7},
}

func TestMask(t *testing.T) {
	const secret = "s3cr3t-Value!"
	b64 := func(enc *base64.Encoding, s string) string { return enc.EncodeToString([]byte(s)) }
	// Basic auth puts "user:" (5 bytes, offset 2 mod 3) before the secret.
	basic := b64(base64.StdEncoding, "user:"+secret)
	inner := func(blob, prefix string) string {
		enc := b64(base64.StdEncoding, blob)
		from := (8*len(prefix) + 5) / 6
		to := 8 * (len(prefix) + len(secret)) / 6
		return enc[:from] + Replacement + enc[to:]
	}
	tests := []struct {
		name   string
		values []string
		in     string
		want   string
	}{
		{"plain", []string{secret}, "token " + secret + " used\n", "token [MASKED] used\n"},
		{"at start and end", []string{secret}, secret + " and " + secret, "[MASKED] and [MASKED]"},
		{"repeated back to back", []string{secret}, secret + secret, "[MASKED][MASKED]"},
		{"nothing to mask", []string{secret}, "a line\nwith s3cr3t but not the value\n", "a line\nwith s3cr3t but not the value\n"},
		{"no values at all", nil, "plain output\r\n\x00\xff", "plain output\r\n\x00\xff"},
		{"empty input", []string{secret}, "", ""},
		{"self-overlapping value", []string{"abababab"}, "abababababx", "[MASKED]x"},
		{"self-overlapping prefix", []string{"aaaaaaab"}, "aaaaaaaaaaaaaab", "aaaaaaa[MASKED]"},
		{"overlapping values", []string{"abcdefgh", "efghijkl"}, "<abcdefghijkl>", "<[MASKED]>"},
		{"value prefix of another", []string{"password1", "password12345"}, "password12345 password1x", "[MASKED] [MASKED]x"},
		{"value inside another", []string{"xxsecret-valuexx", "secret-value"}, "a xxsecret-valuexx b secret-value c", "a [MASKED] b [MASKED] c"},
		{"short value ignored", []string{"short"}, "short words stay", "short words stay"},
		{"utf-8 around value", []string{secret}, "héllo→" + secret + "←ü", "héllo→[MASKED]←ü"},
		{"utf-8 value", []string{"pässwörd-ünï"}, "»pässwörd-ünï«", "»[MASKED]«"},
		{"multi-line value", []string{"line one\nline two"}, "> line one\nline two\n", "> [MASKED]\n"},

		{"base64 std", []string{secret}, "x " + b64(base64.StdEncoding, secret) + " y", "x [MASKED] y"},
		{"base64 url", []string{"a?b>c~d?e>"}, "x " + b64(base64.URLEncoding, "a?b>c~d?e>") + " y", "x [MASKED] y"},
		{"base64 raw std", []string{secret}, "x " + b64(base64.RawStdEncoding, secret) + " y", "x [MASKED] y"},
		{"base64 raw url", []string{"a?b>c~d?e>"}, "x " + b64(base64.RawURLEncoding, "a?b>c~d?e>") + " y", "x [MASKED] y"},
		{"base64 basic auth", []string{secret}, "Authorization: Basic " + basic + "\n",
			"Authorization: Basic " + inner("user:"+secret, "user:") + "\n"},
		{"base64 offset 0", []string{secret}, b64(base64.StdEncoding, "abc"+secret+"tail"),
			inner("abc"+secret+"tail", "abc")},
		{"base64 offset 1", []string{secret}, b64(base64.StdEncoding, "a"+secret+"tail"),
			inner("a"+secret+"tail", "a")},
		{"base64 offset 2", []string{secret}, b64(base64.StdEncoding, "ab"+secret+"tail"),
			inner("ab"+secret+"tail", "ab")},
		{"query escape", []string{"p@ss w/rd+x&y"}, "GET /?token=" + url.QueryEscape("p@ss w/rd+x&y") + "&x=1",
			"GET /?token=[MASKED]&x=1"},
		{"path escape", []string{"p@ss w/rd+x&y"}, "GET /v1/" + url.PathEscape("p@ss w/rd+x&y") + "/x",
			"GET /v1/[MASKED]/x"},
		{"json", []string{`pa"ss\wo<rd>`}, `{"k":"pa\"ss\\wo\u003crd\u003e"}`, `{"k":"[MASKED]"}`},
		{"json without html escaping", []string{`pa"ss\wo<rd>`}, `{"k":"pa\"ss\\wo<rd>"}`, `{"k":"[MASKED]"}`},

		{"token prefix alone", nil, "tokens look like ghp_ or glpat- or AKIA\n", "tokens look like ghp_ or glpat- or AKIA\n"},
		{"aws key too short", nil, "AKIAIOSFODNN7EXAMP end", "AKIAIOSFODNN7EXAMP end"},
		{"aws key longer run", nil, "id=AKIAIOSFODNN7EXAMPLEXYZ;", "id=[MASKED];"},
		{"aws key lowercase after", nil, "id=AKIAIOSFODNN7EXAMPLEabc", "id=[MASKED]abc"},
		{"token in url", nil, "https://oauth2:glpat-AbCd-123.x=@gitlab.test/r.git", "https://oauth2:[MASKED]@gitlab.test/r.git"},
		{"token at end of stream", nil, "export T=ghp_abc", "export T=[MASKED]"},
		{"nested tokens", nil, "glpat-xoxb-123-AKIAIOSFODNN7EXAMPLE ok", "[MASKED] ok"},
		{"value overlapping a token", []string{"1234567890ab"}, "ghp_xyz1234567890ab.", "[MASKED]."},
		{"value adjacent to token body", []string{"-secret-value"}, "ghp_abc-secret-value!", "[MASKED][MASKED]!"},
		{"long token body", nil, "glrt-" + strings.Repeat("Ab3", 400) + " done", "[MASKED] done"},

		{"partial value at close", []string{secret}, "ends with s3cr3t-", "ends with [MASKED]"},
		{"short partial kept", []string{secret}, "ends with s3c", "ends with s3c"},
	}
	for _, tc := range tests {
		for sname, sizes := range splits {
			t.Run(tc.name+"/"+sname, func(t *testing.T) {
				if got := maskAll(t, tc.values, tc.in, sizes); got != tc.want {
					t.Errorf("Mask(%q) = %q, want %q", tc.in, got, tc.want)
				}
			})
		}
		t.Run(tc.name+"/MaskString", func(t *testing.T) {
			if got := New(io.Discard, tc.values...).MaskString(tc.in); got != tc.want {
				t.Errorf("MaskString(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestTokenPrefixes(t *testing.T) {
	for _, tp := range tokenPrefixes {
		body := "AbCdEfGh234567xy"
		if tp.minBody == 16 {
			body = "IOSFODNN7EXAMPLE"
		}
		for _, in := range []string{
			"key: " + tp.prefix + body + "\n",
			"key: " + tp.prefix + body + " " + tp.prefix + body + "\n",
		} {
			want := strings.ReplaceAll(in, tp.prefix+body, Replacement)
			for sname, sizes := range splits {
				t.Run(tp.prefix+"/"+sname, func(t *testing.T) {
					if got := maskAll(t, nil, in, sizes); got != want {
						t.Errorf("Mask(%q) = %q, want %q", in, got, want)
					}
				})
			}
		}
		t.Run(tp.prefix+"/alone", func(t *testing.T) {
			in := "the " + tp.prefix + " prefix"
			if got := maskAll(t, nil, in, nil); got != in {
				t.Errorf("Mask(%q) = %q, want it unchanged", in, got)
			}
		})
	}
}

func TestVariantsDifferAndAreLongEnough(t *testing.T) {
	for _, v := range []string{"abcdefgh", "p@ss w/rd+x&y", `q"<>&\`, "ünïcödé!"} {
		vs := variants(v)
		if vs[0] != v {
			t.Errorf("variants(%q)[0] = %q, want the value", v, vs[0])
		}
		for _, s := range vs[1:] {
			if s == v || len(s) < MinLength {
				t.Errorf("variants(%q) contains %q: equal to the value or shorter than %d", v, s, MinLength)
			}
		}
	}
}

// recorder is an io.Writer that keeps every Write separately.
type recorder struct {
	mu     sync.Mutex
	writes []string
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, string(p))
	return len(p), nil
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.writes, "")
}

func TestStreamsLive(t *testing.T) {
	var r recorder
	m := New(&r, "supersecret")
	steps := []struct{ in, released string }{
		{"first line\n", "first line\n"},
		{"value super", "first line\nvalue "}, // "super" may start the value
		{"secret done\n", "first line\nvalue [MASKED] done\n"},
		{"token glpat-abc", "first line\nvalue [MASKED] done\ntoken [MASKED]"}, // certain as soon as the body starts
		{"defghij and on", "first line\nvalue [MASKED] done\ntoken [MASKED] and on"},
		{" AKIAIOSFODNN7", "first line\nvalue [MASKED] done\ntoken [MASKED] and on "}, // not yet a key
		{"EXAMPLE!", "first line\nvalue [MASKED] done\ntoken [MASKED] and on [MASKED]!"},
	}
	for _, s := range steps {
		n, err := m.Write([]byte(s.in))
		if err != nil || n != len(s.in) {
			t.Fatalf("Write(%q) = %d, %v, want %d, nil", s.in, n, err, len(s.in))
		}
		if got := r.String(); got != s.released {
			t.Fatalf("after Write(%q) output = %q, want %q", s.in, got, s.released)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if got := m.Hits(); got != 3 {
		t.Errorf("Hits() = %d, want 3", got)
	}
	if n, err := m.Write([]byte("late")); !errors.Is(err, ErrClosed) || n != 0 {
		t.Errorf("Write after Close = %d, %v, want 0, ErrClosed", n, err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
}

func TestHoldBackBound(t *testing.T) {
	long := strings.Repeat("k", 40) + "-end"
	var r recorder
	m := New(&r, long)
	in := strings.Repeat("x", 100) + strings.Repeat("k", 200)
	if _, err := m.Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	// Only a partial match may be held: at most the longest pattern - 1.
	held := len(in) - len(r.String())
	longest := New(io.Discard, long).sc.a.maxLen
	if held > longest-1 {
		t.Errorf("held back %d bytes, want at most %d", held, longest-1)
	}
}

func TestEmptyWrite(t *testing.T) {
	var r recorder
	m := New(&r, "supersecret")
	if n, err := m.Write(nil); n != 0 || err != nil {
		t.Errorf("Write(nil) = %d, %v, want 0, nil", n, err)
	}
	if n, err := m.Write([]byte{}); n != 0 || err != nil {
		t.Errorf("Write([]byte{}) = %d, %v, want 0, nil", n, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if len(r.writes) != 0 {
		t.Errorf("underlying writer got %q, want no writes", r.writes)
	}
}

func TestAdd(t *testing.T) {
	var out bytes.Buffer
	m := New(&out, "supersecret-long-1")
	for _, s := range []string{"before ", "super"} {
		if _, err := m.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	// "super" is held back (it may start the first value); the new value
	// is masked in it.
	if refused := m.Add("supersecret", "short"); refused != 1 {
		t.Errorf("Add() refused %d values, want 1", refused)
	}
	if got := m.Refused(); got != 1 {
		t.Errorf("Refused() = %d, want 1", got)
	}
	for _, s := range []string{"secret! ", "c3VwZXJzZWNyZXQ= end"} {
		if _, err := m.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if want := "before [MASKED]! [MASKED] end"; out.String() != want {
		t.Errorf("output = %q, want %q", out.String(), want)
	}
	if got := m.MaskString("x supersecret"); got != "x [MASKED]" {
		t.Errorf("MaskString(%q) = %q, want %q", "x supersecret", got, "x [MASKED]")
	}
}

func TestAddConcurrentWithWrite(t *testing.T) {
	var r recorder
	m := New(&r, "initial-secret-0")
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 200 {
			if _, err := m.Write([]byte("log line with initial-secret-0 in it\n")); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 20 {
			m.Add("added-secret-" + strings.Repeat("x", i))
			_ = m.Hits()
		}
	}()
	wg.Wait()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.String(), "initial-secret-0") {
		t.Errorf("output leaks the secret")
	}
	if got := m.Hits(); got != 200 {
		t.Errorf("Hits() = %d, want 200", got)
	}
}

type failingWriter struct{ calls int }

func (f *failingWriter) Write(p []byte) (int, error) {
	f.calls++
	return 0, errors.New("disk full")
}

func TestWriteError(t *testing.T) {
	f := &failingWriter{}
	m := New(f, "supersecret")
	if _, err := m.Write([]byte("hello\n")); err == nil {
		t.Fatal("Write() = nil error, want the underlying error")
	}
	if _, err := m.Write([]byte("again\n")); err == nil || f.calls != 1 {
		t.Errorf("second Write() = %v after %d calls, want the sticky error after 1 call", err, f.calls)
	}
	if err := m.Close(); err == nil {
		t.Errorf("Close() = nil, want the sticky error")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		value string
		ok    bool
	}{
		{"", false},
		{"1234567", false},
		{"12345678", true},
		{"a much longer secret value", true},
	}
	for _, tc := range tests {
		err := Validate(tc.value)
		if (err == nil) != tc.ok {
			t.Errorf("Validate(%d bytes) = %v, want ok=%v", len(tc.value), err, tc.ok)
		}
		if err != nil && tc.value != "" && strings.Contains(err.Error(), tc.value) {
			t.Errorf("Validate error %q contains the value", err)
		}
	}
}

func TestNoWritesHeldWithoutPartialMatch(t *testing.T) {
	// Output that cannot start any pattern is released in the same Write,
	// and in a single Write call to the sink.
	var r recorder
	m := New(&r, randomSecrets(100, rand.New(rand.NewPCG(5, 6)))...)
	in := "~~~ build finished ~~~\n"
	if _, err := m.Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	if len(r.writes) != 1 || r.writes[0] != in {
		t.Errorf("sink writes = %q, want [%q]", r.writes, in)
	}
}

func TestLargeValue(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 9))
	raw := make([]byte, 3000)
	for i := range raw {
		raw[i] = byte(rng.IntN(256))
	}
	key := "-----BEGIN KEY-----\n" + base64.StdEncoding.EncodeToString(raw) + "\n-----END KEY-----"
	in := "key:\n" + key + "\nencoded: " + base64.StdEncoding.EncodeToString([]byte(key)) + "\ndone\n"
	want := "key:\n[MASKED]\nencoded: [MASKED]\ndone\n"
	for sname, sizes := range map[string][]int{"whole": nil, "bytes": {1}, "odd": {997, 13}} {
		t.Run(sname, func(t *testing.T) {
			if got := maskAll(t, []string{key}, in, sizes); got != want {
				t.Errorf("Mask(large value) = %.80q..., want %q", got, want)
			}
		})
	}
	if a := New(io.Discard, key).sc.a; len(a.trans) > denseBudget {
		t.Errorf("dense table has %d entries, want at most %d", len(a.trans), denseBudget)
	}
}

func TestWriteDoesNotAllocate(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 11))
	data := logText(64<<10, rng)
	m := New(io.Discard, randomSecrets(100, rng)...)
	if _, err := m.Write(data); err != nil { // warm up the scratch buffers
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(20, func() {
		if _, err := m.Write(data); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("Write(64 KiB) allocates %v times per call, want 0", allocs)
	}
}

func TestAddExtendsShownSpan(t *testing.T) {
	var r recorder
	m := New(&r, "prefix-ABCDEFGH")
	if _, err := m.Write([]byte("> prefix-ABCDEFGH")); err != nil {
		t.Fatal(err)
	}
	if got, want := r.String(), "> [MASKED]"; got != want {
		t.Fatalf("output = %q, want %q", got, want)
	}
	// The new value starts inside the masked one: the rest of it must not
	// appear after the Replacement already written.
	m.Add("EFGH-tail-1234")
	if _, err := m.Write([]byte("-tail-1234 end\n")); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := r.String(), "> [MASKED] end\n"; got != want {
		t.Errorf("output = %q, want %q", got, want)
	}
}
