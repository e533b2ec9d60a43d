package runner

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// checkoutServer is a git "smart HTTP" server (git http-backend behind
// net/http/cgi) that wants HTTP Basic gitlab-ci-token:<token>, like
// GitLab's repository endpoint for job tokens.
type checkoutServer struct {
	URL   string // base URL; repositories at URL/<name>.git
	Token string
	SHAs  []string // commits of main, oldest first
	Tag   string   // a tag on SHAs[0]

	mu       sync.Mutex
	requests []*http.Request
	bodies   [][]byte // request bodies, gunzipped
	refused  int
	// unavailable answers that many requests 503 before serving.
	unavailable int
}

func checkoutRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=/nonexistent",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.test",
		"GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.test")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func agentRandomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newCheckoutServer serves a repository platform/web-app.git with three
// commits on main and a tag v1 on the first.
func newCheckoutServer(t *testing.T) *checkoutServer {
	t.Helper()
	return newCheckoutServerFormat(t, "sha1")
}

// newCheckoutServerFormat is newCheckoutServer with a repository of the
// object format given (sha1, sha256).
func newCheckoutServerFormat(t *testing.T, format string) *checkoutServer {
	t.Helper()
	backend, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatalf("git --exec-path: %v", err)
	}
	root := t.TempDir()
	bare := filepath.Join(root, "platform", "web-app.git")
	if err := os.MkdirAll(bare, 0o755); err != nil {
		t.Fatal(err)
	}
	checkoutRun(t, bare, "init", "--quiet", "--bare", "--initial-branch=main", "--object-format="+format)
	// Like Gitaly: any commit may be fetched by id.
	checkoutRun(t, bare, "config", "uploadpack.allowAnySHA1InWant", "true")
	work := t.TempDir()
	checkoutRun(t, work, "init", "--quiet", "--initial-branch=main", "--object-format="+format)
	s := &checkoutServer{Token: "glcbt-64_" + agentRandomHex(12), Tag: "v1"}
	for i, content := range []string{"one\n", "two\n", "three\n"} {
		if err := os.WriteFile(filepath.Join(work, "README"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		checkoutRun(t, work, "add", "README")
		checkoutRun(t, work, "commit", "--quiet", "-m", "commit "+content)
		s.SHAs = append(s.SHAs, checkoutRun(t, work, "rev-parse", "HEAD"))
		if i == 0 {
			checkoutRun(t, work, "tag", s.Tag)
		}
	}
	checkoutRun(t, work, "push", "--quiet", bare, "main", "v1")

	h := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(backend)), "git-http-backend"),
		Root: "/",
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1"},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		plain := body
		if r.Header.Get("Content-Encoding") == "gzip" {
			if zr, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
				plain, _ = io.ReadAll(zr)
			}
		}
		s.mu.Lock()
		if s.unavailable > 0 {
			s.unavailable--
			s.mu.Unlock()
			http.Error(w, "GitLab is not available", http.StatusServiceUnavailable)
			return
		}
		s.bodies = append(s.bodies, plain)
		s.requests = append(s.requests, r.Clone(context.Background()))
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:"+s.Token))
		ok := r.Header.Get("Authorization") == want
		if !ok {
			s.refused++
		}
		s.mu.Unlock()
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
			http.Error(w, "HTTP Basic: Access denied", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// repoURL is the repository URL the way GitLab sends it: with the job
// token in it.
func (s *checkoutServer) repoURL(token string) string {
	return strings.Replace(s.URL, "http://", "http://gitlab-ci-token:"+token+"@", 1) + "/platform/web-app.git"
}

// gitWrapper returns a git that logs its command line to log.
func gitWrapper(t *testing.T) (bin, log string) {
	t.Helper()
	real, err := exec.LookPath("git")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	log = filepath.Join(dir, "argv.log")
	bin = filepath.Join(dir, "git")
	script := "#!/bin/sh\nprintf '%s\\n' \"$*\" >> " + log + "\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, log
}

// filesContaining lists the files under dir whose content holds v.
func filesContaining(t *testing.T, dir, v string) []string {
	t.Helper()
	var hits []string
	filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(v)) {
			hits = append(hits, path)
		}
		return nil
	})
	return hits
}

func TestCheckout(t *testing.T) {
	s := newCheckoutServer(t)
	tests := []struct {
		name     string
		spec     CheckoutSpec
		readme   string
		wantErr  bool
		noTokens bool // the server must see no authorized request
	}{
		{name: "branch head, shallow", readme: "three\n",
			spec: CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", RefType: "branch", SHA: s.SHAs[2], Depth: 1}},
		{name: "older commit beyond the depth", readme: "one\n",
			spec: CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", RefType: "branch", SHA: s.SHAs[0], Depth: 1}},
		{name: "tag", readme: "one\n",
			spec: CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: s.Tag, RefType: "tag", SHA: s.SHAs[0], Depth: 5}},
		{name: "token given apart from a clean URL", readme: "two\n",
			spec: CheckoutSpec{RepoURL: s.URL + "/platform/web-app.git", Token: s.Token, Ref: "main", SHA: s.SHAs[1]}},
		{name: "gitlab refspecs", readme: "three\n",
			spec: CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", SHA: s.SHAs[2], Depth: 20,
				Refspecs: []string{"+refs/heads/main:refs/remotes/origin/main"}}},
		{name: "wrong token", wantErr: true,
			spec: CheckoutSpec{RepoURL: s.repoURL("glcbt-64_wrongwrongwrong"), Ref: "main", SHA: s.SHAs[2], Depth: 1}},
		{name: "not a commit id", wantErr: true,
			spec: CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", SHA: "--upload-pack=touch /tmp/x"}},
		{name: "ref that is an option", wantErr: true,
			spec: CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "--upload-pack=x", SHA: s.SHAs[2]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bin, argvLog := gitWrapper(t)
			tc.spec.Git = bin
			dir := t.TempDir()
			var out bytes.Buffer
			err := Checkout(context.Background(), tc.spec, dir, &out)
			s.mu.Lock()
			token := s.Token
			s.mu.Unlock()
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Checkout() = nil, want an error")
				}
				if strings.Contains(err.Error(), "wrongwrong") || strings.Contains(err.Error(), token) {
					t.Errorf("Checkout() error %q shows the token", err)
				}
				if strings.Contains(out.String(), "wrongwrong") {
					t.Errorf("Checkout() output %q shows the token", out.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("Checkout() = %v\n%s", err, out.String())
			}
			b, err := os.ReadFile(filepath.Join(dir, "README"))
			if err != nil || string(b) != tc.readme {
				t.Errorf("README = %q, %v; want %q", b, err, tc.readme)
			}
			if head := checkoutRun(t, dir, "rev-parse", "HEAD"); head != tc.spec.SHA {
				t.Errorf("HEAD = %s, want %s", head, tc.spec.SHA)
			}
			if hits := filesContaining(t, dir, token); len(hits) > 0 {
				t.Errorf("files holding the job token after checkout: %v", hits)
			}
			cfg, _ := os.ReadFile(filepath.Join(dir, ".git", "config"))
			if strings.Contains(string(cfg), "gitlab-ci-token") || strings.Contains(strings.ToLower(string(cfg)), "extraheader") {
				t.Errorf(".git/config holds credentials:\n%s", cfg)
			}
			argv, _ := os.ReadFile(argvLog)
			if len(argv) == 0 {
				t.Fatalf("git wrapper logged no command line")
			}
			if strings.Contains(string(argv), token) || strings.Contains(string(argv), base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:"+token))) {
				t.Errorf("git command lines hold the token:\n%s", argv)
			}
			if strings.Contains(out.String(), token) {
				t.Errorf("checkout output shows the token:\n%s", out.String())
			}
		})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.requests {
		if strings.Contains(r.URL.String(), s.Token) || r.URL.User != nil {
			t.Errorf("request URL %s carries credentials", r.URL)
		}
	}
}

// GIT_FETCH_EXTRA_FLAGS: an allowlisted flag reaches both fetches (from
// the remote and, with a cache, from the cache): by default, as with
// gitlab-runner, the tags pointing into the fetched history come along
// (git describe works), and --no-tags leaves them out; any other flag is
// refused by name before git runs.
func TestCheckoutFetchFlags(t *testing.T) {
	s := newCheckoutServer(t)
	for _, cached := range []bool{false, true} {
		for _, flags := range [][]string{nil, {"--no-tags"}} {
			spec := CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", RefType: "branch", SHA: s.SHAs[2], FetchFlags: flags}
			if cached {
				spec.CacheDir = t.TempDir()
			}
			dir := t.TempDir()
			var out bytes.Buffer
			if err := Checkout(context.Background(), spec, dir, &out); err != nil {
				t.Fatalf("Checkout(cache %v, flags %v) = %v\n%s", cached, flags, err, out.String())
			}
			tags := checkoutRun(t, dir, "tag", "--list")
			if want := len(flags) == 0; (tags == s.Tag) != want {
				t.Errorf("cache %v, flags %v: tags %q, want %s: %v", cached, flags, tags, s.Tag, want)
			}
		}
	}
	bin, argvLog := gitWrapper(t)
	spec := CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", SHA: s.SHAs[2], Git: bin, FetchFlags: []string{"--prune", "--upload-pack=touch /tmp/x"}}
	if err := Checkout(context.Background(), spec, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), `GIT_FETCH_EXTRA_FLAGS "--upload-pack=touch /tmp/x" is not supported`) {
		t.Errorf("Checkout(--upload-pack) = %v, want a refusal naming the flag", err)
	}
	if argv, _ := os.ReadFile(argvLog); len(argv) > 0 {
		t.Errorf("git ran for a refused flag:\n%s", argv)
	}
}

// GIT_CHECKOUT=false fetches without a working tree: the job's commit
// and the branch are there to check out, no file of the tree is.
func TestCheckoutNoCheckout(t *testing.T) {
	s := newCheckoutServer(t)
	for _, cached := range []bool{false, true} {
		spec := CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", RefType: "branch", SHA: s.SHAs[1], NoCheckout: true}
		if cached {
			spec.CacheDir = t.TempDir()
		}
		dir := t.TempDir()
		var out bytes.Buffer
		if err := Checkout(context.Background(), spec, dir, &out); err != nil {
			t.Fatalf("Checkout(cache %v) = %v\n%s", cached, err, out.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "README")); !os.IsNotExist(err) {
			t.Errorf("cache %v: README is in the workspace (%v), want no working tree", cached, err)
		}
		if !strings.Contains(out.String(), "Skipping Git checkout") {
			t.Errorf("cache %v: the log does not say the checkout was skipped:\n%s", cached, out.String())
		}
		checkoutRun(t, dir, "-c", "advice.detachedHead=false", "checkout", "--quiet", s.SHAs[1])
		if b, err := os.ReadFile(filepath.Join(dir, "README")); err != nil || string(b) != "two\n" {
			t.Errorf("cache %v: after the job's own checkout README = %q, %v; want the job's commit", cached, b, err)
		}
	}
}

// A SHA-256 repository (git_info.repo_object_format) is checked out,
// directly and through the host's cache; made SHA-1, the workspace
// found none of its commits.
func TestCheckoutSHA256(t *testing.T) {
	s := newCheckoutServerFormat(t, "sha256")
	if len(s.SHAs[2]) != 64 {
		t.Fatalf("commit id %q is not a SHA-256 one", s.SHAs[2])
	}
	for _, cached := range []bool{false, true} {
		spec := CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", RefType: "branch", SHA: s.SHAs[1], Depth: 1, ObjectFormat: "sha256"}
		if cached {
			spec.CacheDir = t.TempDir()
		}
		dir := t.TempDir()
		var out bytes.Buffer
		if err := Checkout(context.Background(), spec, dir, &out); err != nil {
			t.Fatalf("Checkout(sha256, cache %v) = %v\n%s", cached, err, out.String())
		}
		if b, err := os.ReadFile(filepath.Join(dir, "README")); err != nil || string(b) != "two\n" {
			t.Errorf("cache %v: README = %q, %v; want two", cached, b, err)
		}
	}
	spec := CheckoutSpec{RepoURL: s.repoURL(s.Token), Ref: "main", SHA: s.SHAs[1], ObjectFormat: "md5"}
	if err := Checkout(context.Background(), spec, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), `object format "md5" is not supported`) {
		t.Errorf("Checkout(md5) = %v, want a refusal naming the format", err)
	}
}
