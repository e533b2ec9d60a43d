package netpolicy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseEntry(t *testing.T) {
	tests := []struct {
		in      string
		want    Entry
		wantErr string
	}{
		{in: "api.example.test", want: Entry{Host: "api.example.test"}},
		{in: " API.Example.Test. ", want: Entry{Host: "api.example.test"}},
		{in: "api.example.test:8443", want: Entry{Host: "api.example.test", Port: 8443}},
		{in: "*.example.test", want: Entry{Host: "example.test", Wildcard: true}},
		{in: "*.example.test:443", want: Entry{Host: "example.test", Wildcard: true, Port: 443}},
		{in: "db", want: Entry{Host: "db"}},
		{in: "10.0.0.0/24:5432", want: Entry{Prefix: netip.MustParsePrefix("10.0.0.0/24"), Port: 5432}},
		{in: "fd00::/8:443", want: Entry{Prefix: netip.MustParsePrefix("fd00::/8"), Port: 443}},
		{in: "", wantErr: "empty entry"},
		{in: "   ", wantErr: "empty entry"},
		{in: "1.2.3.4", wantErr: "IP literals are not allowed"},
		{in: "1.2.3.4:443", wantErr: "IP literals are not allowed"},
		{in: "[::1]:443", wantErr: "IPv6 literals"},
		{in: "::1", wantErr: "IPv6 literals"},
		{in: "1.2.3", wantErr: "looks like an IP address"},
		{in: "host:", wantErr: "empty port"},
		{in: "host:0", wantErr: "out of range"},
		{in: "host:65536", wantErr: "out of range"},
		{in: "host:-1", wantErr: "invalid port"},
		{in: "host:https", wantErr: "invalid port"},
		{in: "*", wantErr: "wildcard must be a whole leftmost label"},
		{in: "*example.test", wantErr: "wildcard must be a whole leftmost label"},
		{in: "*.", wantErr: "wildcard must be a whole leftmost label"},
		{in: "*..test", wantErr: "empty label"},
		{in: "foo.*.test", wantErr: "invalid character"},
		{in: "a..b", wantErr: "empty label"},
		{in: "-a.test", wantErr: "starts or ends with '-'"},
		{in: "a b.test", wantErr: "invalid character"},
		{in: strings.Repeat("a", 64) + ".test", wantErr: "longer than 63"},
		{in: strings.Repeat("a.", 127) + "test", wantErr: "longer than 253"},
		{in: "10.0.0.0/24", wantErr: "needs a port"},
		{in: "10.0.0.0/33:80", wantErr: "invalid CIDR"},
		{in: "10.0.0.1/24:80", wantErr: "host bits set"},
		{in: "::ffff:10.0.0.0/104:80", wantErr: "IPv4-mapped"},
		{in: "10.0.0.0/24:x", wantErr: "invalid port"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseEntry(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseEntry(%q) = %+v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseEntry(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if again, err := ParseEntry(got.String()); err != nil || again != got {
				t.Errorf("ParseEntry(%q.String() = %q) = %+v, %v; want %+v", tc.in, got.String(), again, err, got)
			}
		})
	}
}

func TestParseEntriesReportsAll(t *testing.T) {
	_, err := ParseEntries([]string{"ok.test", "1.2.3.4", "bad:port"})
	if err == nil || !strings.Contains(err.Error(), "1.2.3.4") || !strings.Contains(err.Error(), "bad:port") {
		t.Fatalf("ParseEntries error = %v, want both bad entries named", err)
	}
}

func TestIntersect(t *testing.T) {
	ceiling := []string{"*.example.test:443", "api.allowed.test", "10.0.0.0/24:5432", "*.wild.test"}
	tests := []struct {
		name     string
		declared []string
		want     []string
		wantErr  []string
	}{
		{name: "empty", declared: nil, want: []string{}},
		{name: "exact bare", declared: []string{"api.allowed.test"}, want: []string{"api.allowed.test"}},
		{name: "exact 443", declared: []string{"api.allowed.test:443"}, want: []string{"api.allowed.test:443"}},
		{name: "exact 80", declared: []string{"api.allowed.test:80"}, want: []string{"api.allowed.test:80"}},
		{name: "wildcard child", declared: []string{"a.example.test:443", "x.y.example.test:443"}, want: []string{"a.example.test:443", "x.y.example.test:443"}},
		{name: "wildcard narrower wildcard", declared: []string{"*.sub.example.test:443", "*.example.test:443"}, want: []string{"*.sub.example.test:443", "*.example.test:443"}},
		{name: "bare wildcard any of 80/443", declared: []string{"a.wild.test", "a.wild.test:80"}, want: []string{"a.wild.test", "a.wild.test:80"}},
		{
			name: "bare suffix not covered by wildcard", declared: []string{"example.test:443"},
			wantErr: []string{`egress "example.test:443" is not allowed by the ceiling (allowed: *.example.test:443, api.allowed.test, 10.0.0.0/24:5432, *.wild.test)`},
		},
		{name: "wrong port", declared: []string{"a.example.test:80"}, wantErr: []string{`"a.example.test:80"`}},
		{name: "bare needs both ports", declared: []string{"a.example.test"}, wantErr: []string{`"a.example.test"`}},
		{name: "other port than 80/443", declared: []string{"api.allowed.test:8080"}, wantErr: []string{`"api.allowed.test:8080"`}},
		{name: "wildcard wider than exact", declared: []string{"*.allowed.test"}, wantErr: []string{`"*.allowed.test"`}},
		{
			name: "several denied", declared: []string{"evil.test:443", "api.allowed.test", "evil2.test"},
			wantErr: []string{`egress "evil.test:443", "evil2.test" are not allowed`},
		},
		{name: "job CIDR", declared: []string{"10.0.0.0/24:5432"}, wantErr: []string{`egress "10.0.0.0/24:5432": CIDR entries may only be set by the admin`}},
	}
	ce := mustEntries(t, ceiling...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Intersect(mustEntries(t, tc.declared...), ce)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Intersect(%q) = %v, want error", tc.declared, got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Intersect(%q) error = %q, want it to contain %q", tc.declared, err, w)
					}
				}
				var cerr *CeilingError
				if !errors.As(err, &cerr) {
					t.Errorf("Intersect error %T is not a *CeilingError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Intersect(%q): %v", tc.declared, err)
			}
			if joinEntries(got) != strings.Join(tc.want, ", ") {
				t.Errorf("Intersect(%q) = %q, want %q", tc.declared, joinEntries(got), tc.want)
			}
		})
	}
}

func TestCeilingErrorScope(t *testing.T) {
	_, err := Intersect(mustEntries(t, "evil.test:443"), mustEntries(t, "*.example.test:443", "api.allowed.test"))
	var cerr *CeilingError
	if !errors.As(err, &cerr) {
		t.Fatalf("Intersect error = %v, want *CeilingError", err)
	}
	cerr.Scope = "repo group/app"
	want := `egress "evil.test:443" is not allowed by the ceiling for repo group/app (allowed: *.example.test:443, api.allowed.test)`
	if cerr.Error() != want {
		t.Errorf("CeilingError = %q, want %q", cerr.Error(), want)
	}
	_, err = Intersect(mustEntries(t, "a.test"), nil)
	if err == nil || !strings.Contains(err.Error(), "(allowed: nothing)") {
		t.Errorf("Intersect with empty ceiling error = %v, want (allowed: nothing)", err)
	}
}

func TestPolicyAllows(t *testing.T) {
	p := &Policy{Allow: mustEntries(t, "api.allowed.test", "svc.allowed.test:8443", "*.wild.test:443", "10.1.2.0/24:5432")}
	tests := []struct {
		host string
		port int
		want bool
	}{
		{"api.allowed.test", 443, true},
		{"API.Allowed.Test.", 80, true},
		{"api.allowed.test", 8443, false},
		{"svc.allowed.test", 8443, true},
		{"svc.allowed.test", 443, false},
		{"a.wild.test", 443, true},
		{"a.b.wild.test", 443, true},
		{"wild.test", 443, false},
		{"a.wild.test", 80, false},
		{"evilwild.test", 443, false},
		{"evil.test", 443, false},
		{"10.1.2.3", 5432, true},
		{"10.1.2.3", 443, false},
		{"10.1.3.3", 5432, false},
		{"[::ffff:10.1.2.3]", 5432, true},
	}
	for _, tc := range tests {
		if got := p.Allows(tc.host, tc.port); got != tc.want {
			t.Errorf("Allows(%q, %d) = %v, want %v", tc.host, tc.port, got, tc.want)
		}
	}
	names := map[string]bool{"api.allowed.test": true, "svc.allowed.test": true, "x.wild.test": true, "wild.test": false, "10.1.2.3": false}
	for n, want := range names {
		if got := p.AllowsName(n); got != want {
			t.Errorf("AllowsName(%q) = %v, want %v", n, got, want)
		}
	}
	audit := &Policy{Audit: true}
	if !audit.Allows("anything.test", 22) || !audit.AllowsName("anything.test") {
		t.Errorf("audit policy does not allow anything.test")
	}
	if audit.Allows("1.2.3.4", 443) {
		t.Errorf("audit policy Allows(1.2.3.4, 443) = true, want false (IP literals need a CIDR entry)")
	}
	var nilPolicy *Policy
	if nilPolicy.Allows("api.allowed.test", 443) || nilPolicy.AllowsName("x") || nilPolicy.AllowsAddr(netip.MustParseAddr("1.2.3.4"), 1) {
		t.Errorf("nil policy allows something")
	}
}

func FuzzParseEntry(f *testing.F) {
	for _, s := range []string{"api.example.test", "*.example.test:443", "10.0.0.0/24:5432", "fd00::/8:443",
		"1.2.3.4", "[::1]:80", "host:99999", "*.", "a..b", "x:/:1", "/:", "::/0:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEntry(s)
		if err != nil {
			return
		}
		again, err := ParseEntry(e.String())
		if err != nil || again != e {
			t.Fatalf("ParseEntry(%q) = %+v; reparsing %q = %+v, %v", s, e, e.String(), again, err)
		}
		if e.IsCIDR() == (e.Host != "") {
			t.Fatalf("ParseEntry(%q) = %+v: exactly one of host and prefix must be set", s, e)
		}
		if e.Port < 0 || e.Port > 65535 || (e.IsCIDR() && e.Port == 0) {
			t.Fatalf("ParseEntry(%q) port %d out of range", s, e.Port)
		}
	})
}
