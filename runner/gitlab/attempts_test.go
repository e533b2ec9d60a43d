package gitlab

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/runner/job"
)

// ARTIFACT_DOWNLOAD_ATTEMPTS is how many times a dependency's artifacts
// are requested before the job fails; unset, 3.
func TestArtifactDownloadAttempts(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	build := startJob(t, fake, c, fakegitlab.JobSpec{Name: "build"})
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	w, _ := zw.Create("out/a.txt")
	io.WriteString(w, "built\n")
	zw.Close()
	if err := c.UploadArtifact(testCtx(t), build.ID, build.Token, "artifacts.zip", bytes.NewReader(zb.Bytes()), int64(zb.Len()), ArtifactOptions{}); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/api/v4/jobs/%d/artifacts", build.ID)
	gets := func() (n int) {
		for _, r := range fake.Requests() {
			if r.Method == "GET" && r.Path == path {
				n++
			}
		}
		return n
	}
	for _, tc := range []struct {
		attempts   string
		failures   int
		wantGets   int
		wantFailed bool
	}{
		{"", 2, 3, false},
		{"", 3, 3, true},
		{"1", 1, 1, true},
		{"5", 4, 5, false},
	} {
		t.Run(fmt.Sprintf("attempts=%q,failures=%d", tc.attempts, tc.failures), func(t *testing.T) {
			test := startJob(t, fake, c, fakegitlab.JobSpec{Name: "test"})
			if tc.attempts != "" {
				test.Variables = append(test.Variables, JobVariable{Key: "ARTIFACT_DOWNLOAD_ATTEMPTS", Value: tc.attempts, Public: true})
			}
			dep := JobDependency{ID: build.ID, Name: "build"}
			dep.ArtifactsFile.Filename = "artifacts.zip"
			test.Dependencies = []JobDependency{dep}
			fake.InjectFault(fakegitlab.Fault{Method: "GET", Path: path, Status: 503, Count: tc.failures})
			before := gets()
			dir := t.TempDir()
			var out strings.Builder
			err := NewPipeline(c, test, PipelineOptions{ProjectDir: dir, TempDir: t.TempDir()}).downloadDependencies(testCtx(t), dir, &out)
			if n := gets() - before; n != tc.wantGets {
				t.Errorf("%d download requests, want %d", n, tc.wantGets)
			}
			if retries := strings.Count(out.String(), "Retrying (attempt "); retries != tc.wantGets-1 {
				t.Errorf("the job log says %d retries, want %d:\n%s", retries, tc.wantGets-1, out.String())
			}
			if tc.wantFailed {
				var re *job.ReasonError
				if !errors.As(err, &re) || re.Reason != job.FailureReason(ReasonAPIFailure) {
					t.Errorf("downloadDependencies() = %v, want an api_failure\n%s", err, out.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("downloadDependencies() = %v\n%s", err, out.String())
			}
			if b, err := os.ReadFile(filepath.Join(dir, "out", "a.txt")); err != nil || string(b) != "built\n" {
				t.Errorf("out/a.txt = %q, %v; want the dependency's file", b, err)
			}
		})
	}
}

// flakyCache fails to open a cache archive the first fails times, then
// serves the zip it holds.
type flakyCache struct {
	memCache
	zip   string
	fails int
}

func (c *flakyCache) Open(project, key string, protected bool) (*os.File, error) {
	c.opened = append(c.opened, key)
	if c.fails > 0 {
		c.fails--
		return nil, errors.New("input/output error")
	}
	return os.Open(c.zip)
}

// RESTORE_CACHE_ATTEMPTS tries a cache that failed to extract again;
// unset, a failure only warns.
func TestRestoreCacheAttempts(t *testing.T) {
	zpath := filepath.Join(t.TempDir(), "cache.zip")
	f, err := os.Create(zpath)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	w, _ := zw.Create("vendor/lib.txt")
	io.WriteString(w, "cached\n")
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, tc := range []struct {
		attempts string
		fails    int
		restored bool
	}{{"", 1, false}, {"3", 2, true}, {"2", 2, false}} {
		t.Run(fmt.Sprintf("attempts=%q,fails=%d", tc.attempts, tc.fails), func(t *testing.T) {
			resp := &JobResponse{ID: 1, Token: "t", Cache: []JobCache{{Key: "deps", Paths: []string{"vendor"}, Policy: "pull"}}}
			if tc.attempts != "" {
				resp.Variables = []JobVariable{{Key: "RESTORE_CACHE_ATTEMPTS", Value: tc.attempts}}
			}
			fc := &flakyCache{zip: zpath, fails: tc.fails}
			dir := t.TempDir()
			var out strings.Builder
			NewPipeline(nil, resp, PipelineOptions{ProjectDir: dir, Cache: fc}).restoreCaches(context.Background(), dir, &out)
			_, err := os.Stat(filepath.Join(dir, "vendor", "lib.txt"))
			if got := err == nil; got != tc.restored {
				t.Errorf("restored = %v after %d opens, want %v\n%s", got, len(fc.opened), tc.restored, out.String())
			}
			if tc.restored && !strings.Contains(out.String(), "RESTORE_CACHE_ATTEMPTS") {
				t.Errorf("the log does not say the cache was tried again:\n%s", out.String())
			}
			if !tc.restored && err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
		})
	}
}

// SECRETS_RETRIEVAL_ATTEMPTS resolves the secrets again after Vault
// failed to answer; a refusal is final; every login, a failed attempt's
// too, is revoked.
func TestSecretsRetrievalAttempts(t *testing.T) {
	v := fakevault.New(t)
	v.AddJWTRole("jwt", "r", "the-jwt", []string{"p"}, time.Hour)
	v.PutKV("kv", "app/db", map[string]any{"password": "s3cret-value"})
	target, _ := url.Parse(v.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var readFailures, readStatus atomic.Int32
	var reads atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/kv/data/") {
			reads.Add(1)
			if readFailures.Add(-1) >= 0 {
				w.WriteHeader(int(readStatus.Load()))
				w.Write([]byte(`{"errors":["unavailable"]}`))
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	logins := 0
	for _, tc := range []struct {
		attempts string
		failures int32
		status   int32
		ok       bool
		reads    int32
	}{
		{"", 1, 503, false, 1},
		{"3", 2, 503, true, 3},
		{"3", 1, 403, false, 1},
		{"2", 2, 500, false, 2},
	} {
		t.Run(fmt.Sprintf("attempts=%q,%dx%d", tc.attempts, tc.failures, tc.status), func(t *testing.T) {
			readFailures.Store(tc.failures)
			readStatus.Store(tc.status)
			reads.Store(0)
			resp := secretsPayload(t, front.URL, "kv-v2", nil)
			if tc.attempts != "" {
				resp.Variables = append(resp.Variables, JobVariable{Key: "SECRETS_RETRIEVAL_ATTEMPTS", Value: tc.attempts, Public: true})
			}
			var jobLog strings.Builder
			vars, _, revoke, err := NewPipeline(nil, resp, PipelineOptions{}).ResolveSecrets(context.Background(),
				SecretsOptions{VaultServers: []string{front.URL}, JobLog: &jobLog})
			if n := reads.Load(); n != tc.reads {
				t.Errorf("%d reads, want %d", n, tc.reads)
			}
			// Each retry is said in the job's log, naming the variable.
			if n := strings.Count(jobLog.String(), ", SECRETS_RETRIEVAL_ATTEMPTS)"); n != int(tc.reads)-1 {
				t.Errorf("job log says %d retries, want %d:\n%s", n, tc.reads-1, jobLog.String())
			}
			if strings.Contains(jobLog.String(), "s3cret-value") {
				t.Errorf("the job log holds the secret")
			}
			if tc.ok != (err == nil) || (tc.ok && (len(vars) != 1 || vars[0].Value != "s3cret-value")) {
				t.Errorf("ResolveSecrets() = %d vars, %v; want ok=%v", len(vars), err, tc.ok)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret-value") {
				t.Errorf("the error holds the secret: %v", err)
			}
			if revoke != nil {
				if err := revoke(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			toks := v.JWTTokens()
			if len(toks)-logins != int(tc.reads) {
				t.Errorf("%d logins, want one per attempt (%d)", len(toks)-logins, tc.reads)
			}
			for _, tok := range toks {
				if !tok.Revoked {
					t.Errorf("a login token is still live after the job: %+v", tok)
				}
			}
			logins = len(toks)
		})
	}
}
