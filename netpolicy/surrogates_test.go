package netpolicy

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// linearSurrogates is the search the index replaced, kept as the oracle
// and the benchmark's baseline: every known surrogate against every place.
func linearSurrogates(g *Gateway, r *http.Request) []surrogateHit {
	var hits []surrogateHit
	seen := map[surrogateHit]bool{}
	places := requestPlaces(r)
	for s := range g.surrogates {
		for _, p := range places {
			if h := (surrogateHit{surrogate: s, header: p.header, query: p.query}); strings.Contains(p.text, s) && !seen[h] {
				seen[h] = true
				hits = append(hits, h)
			}
		}
	}
	return hits
}

func sortedHits(h []surrogateHit) []string {
	out := make([]string, 0, len(h))
	for _, x := range h {
		out = append(out, x.surrogate+"|"+x.header+"|"+x.query)
	}
	slices.Sort(out)
	return out
}

// gatewayWithSurrogates knows n surrogates of one shape (a shared prefix,
// as every kind has) for jobs job-0.., some of them retired.
func gatewayWithSurrogates(t testing.TB, n int) (*Gateway, []string) {
	g, err := NewGateway(GatewayConfig{Resolver: StaticResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var surs []string
	for i := range n {
		b := make([]byte, 12)
		for k := range b {
			b[k] = "0123456789abcdef"[rng.IntN(16)]
		}
		s := "glcbt-airlock_" + string(b)
		if i%7 == 0 && len(surs) > 0 {
			prev := surs[len(surs)-1]
			s = "airlock-sur-" + prev[len(prev)-surrogateTailLen:] // the same tail as another's
		}
		if err := g.addSurrogates(fmt.Sprintf("job-%d", i), []Credential{{GrantID: "g", Surrogate: s, Hosts: []string{"a.test"}, Value: []byte("v")}}); err != nil {
			continue // a duplicate of the generator's
		}
		surs = append(surs, s)
		if i%3 == 0 {
			g.retireSurrogates(fmt.Sprintf("job-%d", i))
		}
	}
	return g, surs
}

func requestWith(t testing.TB, surs ...string) *http.Request {
	q := "job=a&page=2"
	if len(surs) > 1 {
		q += "&job_token=" + surs[1]
	}
	r, err := http.NewRequest(http.MethodGet, "https://gitlab.example.test/api/v4/projects/1/jobs?"+q, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"Accept", "User-Agent", "Accept-Encoding", "X-Request-Id"} {
		r.Header.Set(h, "a-value-of-a-header-0123456789")
	}
	if len(surs) > 0 {
		r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:"+surs[0])))
	}
	if len(surs) > 2 {
		r.Header.Set("Job-Token", "x"+surs[2]+surs[2])
	}
	return r
}

// The index finds exactly what a search of every surrogate finds, also
// after surrogates are forgotten, and forgetting leaves no index entry.
func TestSurrogateIndex(t *testing.T) {
	g, surs := gatewayWithSurrogates(t, 500)
	shared := 0
	for _, b := range g.surTails {
		if len(b) > 1 {
			shared++
		}
	}
	if shared == 0 {
		t.Fatal("no two surrogates share a tail: the test does not exercise shared entries")
	}
	check := func(r *http.Request) {
		t.Helper()
		got, want := sortedHits(g.findSurrogates(r)), sortedHits(linearSurrogates(g, r))
		if !slices.Equal(got, want) {
			t.Errorf("index found %v, a full search %v", got, want)
		}
	}
	check(requestWith(t))
	for i := 0; i+2 < len(surs); i += 37 {
		r := requestWith(t, surs[i], surs[i+1], surs[i+2])
		if n := len(g.findSurrogates(r)); n < 3 {
			t.Errorf("request with three surrogates: %d hits", n)
		}
		check(r)
	}
	for i := 0; i < 100; i++ {
		g.dropSurrogates(fmt.Sprintf("job-%d", i))
	}
	for i := 0; i+2 < len(surs); i += 11 {
		check(requestWith(t, surs[i], surs[i+1], surs[i+2]))
	}
	// Expire every retired one and drop the rest: nothing stays indexed.
	for _, o := range g.surrogates {
		if !o.retired.IsZero() {
			o.retired = time.Now().Add(-2 * retiredSurrogateTTL)
		}
	}
	if err := g.addSurrogates("job-new", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		g.dropSurrogates(fmt.Sprintf("job-%d", i))
	}
	if len(g.surrogates) != 0 || len(g.surTails) != 0 {
		t.Errorf("after forgetting all: %d surrogates, %d index entries", len(g.surrogates), len(g.surTails))
	}
}

// BenchmarkFindSurrogates: the check of one request (six headers, a
// Basic credential, a three-parameter query) with the index vs a search
// of every known surrogate, measured interleaved in the same run.
func BenchmarkFindSurrogates(b *testing.B) {
	for _, n := range []int{16, 2000} {
		b.Run(fmt.Sprintf("known=%d", n), func(b *testing.B) {
			g, surs := gatewayWithSurrogates(b, n)
			r := requestWith(b, surs[0], surs[1])
			const rounds = 2000
			var index, linear time.Duration
			for b.Loop() {
				for range rounds / 100 {
					start := time.Now()
					for range 100 {
						g.findSurrogates(r)
					}
					index += time.Since(start)
					start = time.Now()
					for range 100 {
						linearSurrogates(g, r)
					}
					linear += time.Since(start)
				}
			}
			per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 / float64(rounds*b.N) }
			b.ReportMetric(per(index), "index-µs/request")
			b.ReportMetric(per(linear), "linear-µs/request")
			b.ReportMetric(float64(index)/float64(linear), "ratio")
		})
	}
}
