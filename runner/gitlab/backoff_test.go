package gitlab

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		hdr  map[string]string
		want time.Duration
	}{
		{"none", nil, 0},
		{"seconds", map[string]string{"Retry-After": "7"}, 7 * time.Second},
		{"http date", map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)}, 90 * time.Second},
		{"date in the past", map[string]string{"Retry-After": now.Add(-time.Hour).Format(http.TimeFormat)}, 0},
		{"garbage", map[string]string{"Retry-After": "soon"}, 0},
		{"negative", map[string]string{"Retry-After": "-5"}, 0},
		{"capped", map[string]string{"Retry-After": "86400"}, maxServerWait},
		{"RateLimit-ResetTime", map[string]string{"RateLimit-ResetTime": now.Add(42 * time.Second).Format(http.TimeFormat)}, 42 * time.Second},
		{"Retry-After wins", map[string]string{"Retry-After": "3", "RateLimit-ResetTime": now.Add(42 * time.Second).Format(http.TimeFormat)}, 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.hdr {
				h.Set(k, v)
			}
			if got := retryAfter(h, now); got != tc.want {
				t.Errorf("retryAfter(%v) = %s, want %s", tc.hdr, got, tc.want)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		min     time.Duration
		wantMin time.Duration
		wantMax time.Duration
	}{
		{"no hint", errors.New("boom"), 100 * time.Millisecond, 100 * time.Millisecond, 5 * time.Second},
		{"server hint", &APIError{Status: 429, RetryAfter: 30 * time.Second}, 100 * time.Millisecond, 30 * time.Second, 30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBackoff(tc.min, 5*time.Second)
			var sum time.Duration
			for i := 0; i < 200; i++ {
				d := b.Next(tc.err)
				if d < tc.wantMin || d > tc.wantMax {
					t.Fatalf("Next() #%d = %s, want in [%s, %s]", i, d, tc.wantMin, tc.wantMax)
				}
				sum += d
			}
			if tc.err.Error() == "boom" && sum < 200*time.Second {
				// 200 draws from [0.1s, 5s] after the ramp-up average far above 1s.
				t.Errorf("sum of 200 waits = %s; the back-off does not grow", sum)
			}
			b.Reset()
			if d := b.Next(nil); d < tc.min || d > 2*tc.min {
				t.Errorf("Next() after Reset = %s, want about %s", d, tc.min)
			}
		})
	}
}
