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
	base, shas := submoduleServerRepos(t, token)
	return base, shas["app"], shas["foreign"]
}

// submoduleServerRepos is submoduleServer with, besides, platform/mixed.git:
// submodule lib (same host) and vendor/ext (on another host). It returns
// the head commit of each super repository by name.
func submoduleServerRepos(t *testing.T, token string) (string, map[string]string) {
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
	lib, app, foreign, mixed := bare("lib"), bare("app"), bare("foreign"), bare("mixed")
	w := t.TempDir()
	checkoutRun(t, w, "init", "--quiet", "--initial-branch=main")
	os.WriteFile(filepath.Join(w, "lib.txt"), []byte("from-the-submodule\n"), 0o644)
	checkoutRun(t, w, "add", ".")
	checkoutRun(t, w, "commit", "--quiet", "-m", "lib")
	libSHA := checkoutRun(t, w, "rev-parse", "HEAD")
	checkoutRun(t, w, "push", "--quiet", lib, "main")

	// super pushes a repository whose submodules are at the given paths
	// (path, url pairs), each at lib's commit.
	super := func(bareDir string, mods ...string) string {
		sw := t.TempDir()
		checkoutRun(t, sw, "init", "--quiet", "--initial-branch=main")
		var gm strings.Builder
		for i := 0; i < len(mods); i += 2 {
			gm.WriteString("[submodule \"" + mods[i] + "\"]\n\tpath = " + mods[i] + "\n\turl = " + mods[i+1] + "\n")
			checkoutRun(t, sw, "update-index", "--add", "--cacheinfo", "160000,"+libSHA+","+mods[i])
		}
		os.WriteFile(filepath.Join(sw, ".gitmodules"), []byte(gm.String()), 0o644)
		checkoutRun(t, sw, "add", ".gitmodules")
		checkoutRun(t, sw, "commit", "--quiet", "-m", "super")
		checkoutRun(t, sw, "push", "--quiet", bareDir, "main")
		return checkoutRun(t, sw, "rev-parse", "HEAD")
	}
	shas := map[string]string{
		"app":     super(app, "lib", "../lib.git"),
		"foreign": super(foreign, "lib", "https://elsewhere.invalid/lib.git"),
		"mixed":   super(mixed, "lib", "../lib.git", "vendor/ext", "https://elsewhere.invalid/ext.git"),
	}

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
	return srv.URL, shas
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

// GIT_SUBMODULE_PATHS chooses the top-level submodules: an excluded one is
// neither fetched nor checked against the host rule.
func TestCheckoutSubmodulePaths(t *testing.T) {
	token := "glcbt-64_" + agentRandomHex(8)
	base, shas := submoduleServerRepos(t, token)
	run := func(wantLib bool, paths ...string) (string, error) {
		dir := t.TempDir()
		var out bytes.Buffer
		err := checkout.Run(context.Background(), checkout.Spec{RepoURL: base + "/platform/mixed.git", Ref: "main", SHA: shas["mixed"],
			Refspecs: []string{"+refs/heads/main:refs/remotes/origin/main"}, Username: "gitlab-ci-token", Token: token,
			Submodules: "recursive", SubmodulePaths: paths}, dir, &out)
		if err == nil {
			if b, rerr := os.ReadFile(filepath.Join(dir, "lib", "lib.txt")); wantLib != (rerr == nil && string(b) == "from-the-submodule\n") {
				t.Errorf("GIT_SUBMODULE_PATHS %q: lib/lib.txt = %q, %v; want it checked out: %v\n%s", paths, b, rerr, wantLib, out.String())
			}
			if ents, _ := os.ReadDir(filepath.Join(dir, "vendor", "ext")); len(ents) != 0 {
				t.Errorf("GIT_SUBMODULE_PATHS %q: vendor/ext was checked out", paths)
			}
		}
		return out.String(), err
	}
	for _, paths := range [][]string{{":(exclude)vendor/ext"}, {":!vendor"}, {"lib"}, {"./lib/"}} {
		if out, err := run(true, paths...); err != nil {
			t.Errorf("GIT_SUBMODULE_PATHS %q: %v\n%s", paths, err, out)
		}
	}
	// Without a selection, or choosing it, the foreign one is refused.
	for _, paths := range [][]string{nil, {"vendor"}, {"lib", "vendor/ext"}} {
		if _, err := run(true, paths...); err == nil || !strings.Contains(err.Error(), "elsewhere.invalid") {
			t.Errorf("GIT_SUBMODULE_PATHS %q: %v, want the foreign submodule refused", paths, err)
		}
	}
	if out, err := run(false, ":(exclude)lib", ":(exclude)vendor"); err != nil || !strings.Contains(out, "chooses none") {
		t.Errorf("everything excluded: %v, output %q; want no submodule and a note", err, out)
	}
	for _, bad := range []string{":(glob)lib/*", "../elsewhere", "/etc", "-x", "li*"} {
		if _, err := run(true, bad); err == nil || !strings.Contains(err.Error(), "GIT_SUBMODULE_PATHS") {
			t.Errorf("GIT_SUBMODULE_PATHS %q: %v, want a refusal naming the variable", bad, err)
		}
	}
}
