package gitlab

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
)

func TestUploadArtifact(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(fake *fakegitlab.Server, id int64)
		token     string
		seeker    bool
		wantErr   error
		wantPosts int
	}{
		{name: "plain", seeker: true, wantPosts: 1},
		{name: "307 redirect", seeker: true, setup: func(f *fakegitlab.Server, _ int64) { f.RedirectArtifacts(1) }, wantPosts: 2},
		{name: "307 with a non-seekable reader", setup: func(f *fakegitlab.Server, _ int64) { f.RedirectArtifacts(1) }, wantPosts: 2},
		{name: "503 retried", seeker: true, setup: func(f *fakegitlab.Server, id int64) {
			f.InjectFault(fakegitlab.Fault{Path: fmt.Sprintf("/api/v4/jobs/%d/artifacts", id), Status: 503, Count: 2})
		}, wantPosts: 3},
		{name: "503 six times gives up after 6 tries", seeker: true, setup: func(f *fakegitlab.Server, id int64) {
			f.InjectFault(fakegitlab.Fault{Path: fmt.Sprintf("/api/v4/jobs/%d/artifacts", id), Status: 503, Count: 10})
		}, wantErr: errors.New("503"), wantPosts: 6},
		{name: "500 gives up after 3 tries", seeker: true, setup: func(f *fakegitlab.Server, id int64) {
			f.InjectFault(fakegitlab.Fault{Path: fmt.Sprintf("/api/v4/jobs/%d/artifacts", id), Status: 500, Count: 10})
		}, wantErr: errors.New("500"), wantPosts: 3},
		{name: "403", seeker: true, token: "glcbt-wrong", wantErr: ErrArtifactRefused, wantPosts: 1},
		{name: "413", seeker: true, setup: func(f *fakegitlab.Server, id int64) {
			f.InjectFault(fakegitlab.Fault{Path: fmt.Sprintf("/api/v4/jobs/%d/artifacts", id), Status: 413, Count: 1})
		}, wantErr: errors.New("413"), wantPosts: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newRunnerFake(t)
			c, _ := newTestClient(t, fake)
			j := startJob(t, fake, c, fakegitlab.JobSpec{})
			if tc.setup != nil {
				tc.setup(fake, j.ID)
			}
			token := j.Token
			if tc.token != "" {
				token = tc.token
			}
			data := bytes.Repeat([]byte("PK audit trail\n"), 1000)
			var r interface{ Read([]byte) (int, error) } = bytes.NewReader(data)
			if !tc.seeker {
				r = strings.NewReader(string(data))
				r = struct{ readerOnly }{readerOnly{r}}
			}
			err := c.UploadArtifact(testCtx(t), j.ID, token, "airlock-audit.zip", r, int64(len(data)),
				ArtifactOptions{ExpireIn: "30 days"})
			var posts int
			for _, req := range fake.Requests() {
				if req.Method == "POST" && strings.HasSuffix(req.Path, "/artifacts") {
					posts++
				}
			}
			if posts != tc.wantPosts {
				t.Errorf("artifact POSTs = %d, want %d", posts, tc.wantPosts)
			}
			if tc.wantErr != nil {
				if err == nil || !(errors.Is(err, tc.wantErr) || strings.Contains(err.Error(), tc.wantErr.Error())) {
					t.Fatalf("UploadArtifact() = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("UploadArtifact() = %v", err)
			}
			arts := fake.Artifacts(j.ID)
			if len(arts) != 1 {
				t.Fatalf("stored artifacts = %d, want 1", len(arts))
			}
			a := arts[0]
			if a.Name != "airlock-audit.zip" || a.Type != "archive" || a.Format != "zip" || a.ExpireIn != "30 days" || !bytes.Equal(a.Data, data) {
				t.Errorf("artifact = %s %s/%s %q %d bytes, want airlock-audit.zip archive/zip \"30 days\" %d bytes",
					a.Name, a.Type, a.Format, a.ExpireIn, len(a.Data), len(data))
			}
		})
	}
}

type readerOnly struct {
	r interface{ Read([]byte) (int, error) }
}

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

func TestUploadArtifactRefusesCrossHostRedirect(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Location", "http://storage.elsewhere.test/upload")
		w.WriteHeader(http.StatusTemporaryRedirect)
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, WithHTTPClient(srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	err = c.UploadArtifact(testCtx(t), 1, "glcbt-tok", "a.zip", bytes.NewReader([]byte("zip")), 3, ArtifactOptions{})
	if err == nil || !strings.Contains(err.Error(), "another host") || strings.Contains(err.Error(), "glcbt-tok") {
		t.Fatalf("UploadArtifact() = %v, want a refusal naming the other host and not the token", err)
	}
	if hits.Load() != 1 {
		t.Errorf("requests = %d, want 1", hits.Load())
	}
}
