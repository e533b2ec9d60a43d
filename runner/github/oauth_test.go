package github

import (
	"crypto/rand"
	"crypto/rsa"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestClientAssertion(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		fips bool
		alg  string
	}{{true, "PS256"}, {false, "RS256"}} {
		reg := &Registration{ClientID: "client-1", AuthorizationURL: "https://tokens.example/_apis/oauth2/token/abc?x=1", RequireFIPS: tc.fips, Key: key}
		now := time.Now()
		s, err := ClientAssertion(reg, now)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.Parse(s, func(*jwt.Token) (any, error) { return &key.PublicKey, nil }, jwt.WithValidMethods([]string{tc.alg}))
		if err != nil {
			t.Fatalf("fips=%v: assertion does not verify as %s: %v", tc.fips, tc.alg, err)
		}
		c := tok.Claims.(jwt.MapClaims)
		exp, _ := c.GetExpirationTime()
		nbf, _ := c.GetNotBefore()
		if c["iss"] != "client-1" || c["sub"] != "client-1" || c["aud"] != reg.AuthorizationURL || c["jti"] == "" {
			t.Errorf("claims %v", c)
		}
		if exp.Sub(nbf.Time) != assertionLife || nbf.After(now) {
			t.Errorf("nbf %v exp %v: want a 5-minute life starting at or before now", nbf, exp)
		}
		s2, _ := ClientAssertion(reg, now)
		t2, _ := jwt.Parse(s2, func(*jwt.Token) (any, error) { return &key.PublicKey, nil })
		if t2.Claims.(jwt.MapClaims)["jti"] == c["jti"] {
			t.Error("two assertions share a jti")
		}
	}
}

func TestParseLockedUntil(t *testing.T) {
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	tests := map[string]time.Time{
		"2026-12-01T09:10:00.1234567Z": time.Date(2026, 12, 1, 9, 10, 0, 123456700, time.UTC),
		"2026-12-01T09:10:00Z":         time.Date(2026, 12, 1, 9, 10, 0, 0, time.UTC),
		"2026-12-01T09:10:00.5":        time.Date(2026, 12, 1, 9, 10, 0, 500000000, time.UTC),
		"0001-01-01T00:00:00":          now.Add(5 * time.Minute),
		"":                             now.Add(5 * time.Minute),
	}
	for in, want := range tests {
		if got := parseLockedUntil(in, now); !got.Equal(want) {
			t.Errorf("parseLockedUntil(%q) = %v, want %v", in, got, want)
		}
	}
}
