package github

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/airlock-ci/airlock/runner/job"
)

// assertionLife is how long a client assertion is valid (§2).
const assertionLife = 5 * time.Minute

// clockSkew is subtracted from nbf to absorb a host clock slightly ahead.
const clockSkew = 30 * time.Second

// ErrRegistrationGone is wrapped when GitHub no longer knows the runner
// (OAuth invalid_client, broker RunnerNotFound). It wraps
// job.ErrCoordinatorGone so that the agent stops serving it.
var ErrRegistrationGone = fmt.Errorf("the runner's registration was deleted on GitHub: %w", job.ErrCoordinatorGone)

// ClientAssertion signs the JWT the OAuth token service exchanges for a
// bearer token: iss = sub = client id, aud = the authorization URL byte for
// byte, a fresh jti, nbf now (less skew), exp five minutes later; PS256
// when the registration requires FIPS cryptography, RS256 otherwise.
func ClientAssertion(reg *Registration, now time.Time) (string, error) {
	method := jwt.SigningMethod(jwt.SigningMethodRS256)
	if reg.RequireFIPS {
		method = jwt.SigningMethodPS256
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("signing client assertion: %w", err)
	}
	jti[6] = jti[6]&0x0f | 0x40
	jti[8] = jti[8]&0x3f | 0x80
	h := hex.EncodeToString(jti)
	nbf := now.Add(-clockSkew)
	claims := jwt.MapClaims{
		"iss": reg.ClientID,
		"sub": reg.ClientID,
		"aud": reg.AuthorizationURL,
		"nbf": nbf.Unix(),
		"iat": nbf.Unix(),
		"exp": nbf.Add(assertionLife).Unix(),
		"jti": h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:],
	}
	s, err := jwt.NewWithClaims(method, claims).SignedString(reg.Key)
	if err != nil {
		return "", fmt.Errorf("signing client assertion: %w", err)
	}
	return s, nil
}

// tokenSource buys and caches the runner's OAuth bearer token.
type tokenSource struct {
	reg *Registration
	hc  *http.Client
	now func() time.Time

	mu      sync.Mutex
	token   string
	expires time.Time
}

type tokenAnswer struct {
	AccessToken string     `json:"access_token"`
	TokenType   string     `json:"token_type"`
	ExpiresIn   flexString `json:"expires_in"`
}

// Token returns a valid bearer token, exchanging a fresh assertion when
// the cached one is missing or about to expire.
func (ts *tokenSource) Token(ctx context.Context) (string, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	now := ts.now()
	if ts.token != "" && now.Before(ts.expires.Add(-time.Minute)) {
		return ts.token, nil
	}
	assertion, err := ClientAssertion(ts.reg, now)
	if err != nil {
		return "", err
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion},
	}
	var ans tokenAnswer
	_, err = do(ctx, ts.hc, request{op: "exchanging the runner's OAuth token", method: http.MethodPost, url: ts.reg.AuthorizationURL, body: form}, &ans)
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) && strings.EqualFold(ae.Kind, "invalid_client") {
			return "", fmt.Errorf("%w (%v)", ErrRegistrationGone, err)
		}
		if strings.Contains(err.Error(), "Current server time is") {
			return "", fmt.Errorf("%w: the host clock is off; fix it (NTP)", err)
		}
		return "", err
	}
	if ans.AccessToken == "" {
		return "", errors.New("exchanging the runner's OAuth token: the answer has no access_token")
	}
	secs, _ := ans.ExpiresIn.int64("expires_in")
	life := time.Duration(secs) * time.Second
	if life <= 0 {
		life = time.Hour
	}
	ts.token, ts.expires = ans.AccessToken, now.Add(life)
	return ts.token, nil
}

// Invalidate drops the cached token (after a 401 or ForceTokenRefresh).
func (ts *tokenSource) Invalidate(stale string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if stale == "" || ts.token == stale {
		ts.token = ""
	}
}

// withRunnerToken sends req with the runner's bearer token and, on a 401,
// once more with a freshly exchanged one.
func (ts *tokenSource) do(ctx context.Context, hc *http.Client, req request, out any) (bool, error) {
	for attempt := 0; ; attempt++ {
		tok, err := ts.Token(ctx)
		if err != nil {
			return false, err
		}
		req.auth = "Bearer " + tok
		got, err := do(ctx, hc, req, out)
		if StatusOf(err) == http.StatusUnauthorized && attempt == 0 {
			ts.Invalidate(tok)
			continue
		}
		return got, err
	}
}
