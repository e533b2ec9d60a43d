package gitlab

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

func TestEndpointLabel(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://gitlab.example.test/api/v4/jobs/request", "/jobs/request"},
		{"https://gitlab.example.test/api/v4/jobs/1234/trace", "/jobs/:id/trace"},
		{"https://gitlab.example.test/api/v4/jobs/1234", "/jobs/:id"},
		{"https://gitlab.example.test/prefix/api/v4/jobs/9/artifacts?artifact_type=archive", "/jobs/:id/artifacts"},
		{"https://gitlab.example.test/api/v4/runners/verify", "/runners/verify"},
	}
	for _, tc := range tests {
		if got := endpointLabel(tc.in); got != tc.want {
			t.Errorf("endpointLabel(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRequestObserver(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	var mu sync.Mutex
	var got []string
	c, err := New(srv.URL, WithHTTPClient(srv.Client()), WithRequestObserver(func(method, endpoint string, status int) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, method+" "+endpoint+" "+http.StatusText(status))
	}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RequestJob(context.Background(), "glrt-observer", "s_000000000000"); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	c.RequestJob(context.Background(), "glrt-observer", "s_000000000000")
	mu.Lock()
	defer mu.Unlock()
	want := []string{"POST /jobs/request No Content", "POST /jobs/request "}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("observed %q, want %q", got, want)
	}
}
