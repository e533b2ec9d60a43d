package runner

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/runner/checkout"
)

// submoduleServer serves platform/app.git, whose submodule lib (a
// relative URL, ../lib.git) is platform/lib.git on the same host, and
// platform/foreign.git, whose submodule is on another host. Every request
// needs the job token.
func submoduleServer(t *testing.T, token string) (base string, appSHA, foreignSHA string) {
	t.Helper()
	backend, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	bare := func(name string) string {
		p := filepath.Join(root, "platform", name+".git")
		os.MkdirAll(p, 0o755)
		checkoutRun(t, p, "init", "--quiet", "--bare", "--initial-branch=main")
		checkoutRun(t, p, "config", "uploadpack.allowAnySHA1InWant", "true")
		return p
	}
	lib, app, foreign := bare("lib"), bare("app"), bare("foreign")
	w := t.TempDir()
	checkoutRun(t, w, "init", "--quiet", "--initial-branch=main")
	os.WriteFile(filepath.Join(w, "lib.txt"), []byte("from-the-submodule\n"), 0o644)
	checkoutRun(t, w, "add", ".")
	checkoutRun(t, w, "commit", "--quiet", "-m", "lib")
	libSHA := checkoutRun(t, w, "rev-parse", "HEAD")
	checkoutRun(t, w, "push", "--quiet", lib, "main")

	super := func(url, bareDir string) string {
		sw := t.TempDir()
		checkoutRun(t, sw, "init", "--quiet", "--initial-branch=main")
		os.WriteFile(filepath.Join(sw, ".gitmodules"), []byte("[submodule \"lib\"]\n\tpath = lib\n\turl = "+url+"\n"), 0o644)
		checkoutRun(t, sw, "update-index", "--add", "--cacheinfo", "160000,"+libSHA+",lib")
		checkoutRun(t, sw, "add", ".gitmodules")
		checkoutRun(t, sw, "commit", "--quiet", "-m", "super")
		checkoutRun(t, sw, "push", "--quiet", bareDir, "main")
		return checkoutRun(t, sw, "rev-parse", "HEAD")
	}
	appSHA = super("../lib.git", app)
	foreignSHA = super("https://elsewhere.invalid/lib.git", foreign)

	h := &cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(backend)), "git-http-backend"), Root: "/",
		Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1"}}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:"+token))
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want {
			rw.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
			http.Error(rw, "HTTP Basic: Access denied", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(rw, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, appSHA, foreignSHA
}

func TestCheckoutSubmodules(t *testing.T) {
	token := "glcbt-64_" + agentRandomHex(8)
	base, appSHA, foreignSHA := submoduleServer(t, token)
	spec := func(repo, sha, strategy string) checkout.Spec {
		return checkout.Spec{RepoURL: base + "/platform/" + repo + ".git", Ref: "main", SHA: sha,
			Refspecs: []string{"+refs/heads/main:refs/remotes/origin/main"}, Username: "gitlab-ci-token", Token: token,
			Submodules: strategy}
	}
	t.Run("same host, with the job token", func(t *testing.T) {
		dir := t.TempDir()
		var out bytes.Buffer
		if err := checkout.Run(context.Background(), spec("app", appSHA, "recursive"), dir, &out); err != nil {
			t.Fatalf("Run() = %v\n%s", err, out.String())
		}
		b, err := os.ReadFile(filepath.Join(dir, "lib", "lib.txt"))
		if err != nil || string(b) != "from-the-submodule\n" {
			t.Errorf("lib/lib.txt = %q, %v; want the submodule checked out", b, err)
		}
		if strings.Contains(out.String(), token) {
			t.Errorf("the job token is in the checkout's output")
		}
	})
	t.Run("none leaves it out", func(t *testing.T) {
		dir := t.TempDir()
		if err := checkout.Run(context.Background(), spec("app", appSHA, "none"), dir, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "lib", "lib.txt")); err == nil {
			t.Errorf("GIT_SUBMODULE_STRATEGY none checked out the submodule")
		}
	})
	t.Run("another host is refused", func(t *testing.T) {
		err := checkout.Run(context.Background(), spec("foreign", foreignSHA, "normal"), t.TempDir(), nil)
		if err == nil || !strings.Contains(err.Error(), "elsewhere.invalid") {
			t.Errorf("Run(foreign submodule) = %v, want a refusal naming the host", err)
		}
	})
	t.Run("update flags outside the allowlist are refused", func(t *testing.T) {
		s := spec("app", appSHA, "normal")
		s.SubmoduleFlags = []string{"--reference", "/etc"}
		if err := checkout.Run(context.Background(), s, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "--reference") {
			t.Errorf("Run(--reference) = %v, want a refusal naming the flag", err)
		}
	})
}
