package mask

import (
	"encoding/base64"
	"io"
	"strings"
	"testing"
)

func TestMaskFoldMatchesCaseFoldedValues(t *testing.T) {
	const secret = "AbCd3fGh1jKlMn0p"
	m := New(io.Discard, secret)
	lower, upper := strings.ToLower(secret), strings.ToUpper(secret)
	for _, tc := range []struct{ in, want string }{
		{secret + ".example.test", "[MASKED].example.test"},
		{lower + ".example.test", "[MASKED].example.test"},
		{upper + ".EXAMPLE.test", "[MASKED].EXAMPLE.test"},
		{"x." + lower, "x.[MASKED]"},
		{"Mixed Case Stays", "Mixed Case Stays"},
		{strings.ToLower(base64.RawURLEncoding.EncodeToString([]byte(secret))) + ".b64.test", "[MASKED].b64.test"},
		{"token ghp_" + strings.Repeat("A", 36), "token [MASKED]"},
		{"", ""},
	} {
		if got := m.MaskFold(tc.in); got != tc.want {
			t.Errorf("MaskFold(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// The exact masker alone lets the case-folded forms through: that is
	// what MaskFold is for.
	if got := m.MaskString(lower + ".example.test"); !strings.Contains(got, lower) {
		t.Fatalf("MaskString masked the lower-cased value (%q): the test no longer shows the gap", got)
	}
	// Values added later are folded too.
	const later = "LaterValue12345"
	m.Add(later)
	if got := m.MaskFold(strings.ToLower(later)); got != Replacement {
		t.Errorf("MaskFold of a value added later = %q", got)
	}
}

func BenchmarkMaskFoldHost(b *testing.B) {
	m := New(io.Discard, "AbCd3fGh1jKlMn0p", "another-secret-value-123456")
	host := "registry-1.docker.example.test"
	b.ReportAllocs()
	for range b.N {
		_ = m.MaskFold(host)
	}
}
