package fakegithub

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"time"
)

// action is an action repository the fake serves through the launch
// service.
type fakeAction struct {
	repo, ref string
	tarball   []byte
	token     string // the per-download token of the last resolution
	downloads int
}

// AddAction serves repo ("owner/name") at ref with files (path ->
// content) as GitHub's tarball endpoint does: a gzip tar with one
// top-level directory.
func (f *Runners) AddAction(repo, ref string, files map[string]string) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	top := strings.ReplaceAll(repo, "/", "-") + "-0123abc/"
	_ = tw.WriteHeader(&tar.Header{Name: top, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)})
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		_ = tw.WriteHeader(&tar.Header{Name: top + n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[n])), ModTime: time.Unix(0, 0)})
		_, _ = tw.Write([]byte(files[n]))
	}
	_ = tw.Close()
	_ = gz.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.actions == nil {
		f.actions = map[string]*fakeAction{}
	}
	f.actions[repo+"@"+ref] = &fakeAction{repo: repo, ref: ref, tarball: buf.Bytes()}
}

// DownloadTokens are the per-download tokens the launch service handed
// out (they must never reach a job).
func (f *Runners) DownloadTokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, a := range f.actions {
		if a.token != "" {
			out = append(out, a.token)
		}
	}
	return out
}

// Downloads is how often repo@ref was downloaded.
func (f *Runners) Downloads(repoAtRef string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a := f.actions[repoAtRef]; a != nil {
		return a.downloads
	}
	return 0
}

func (f *Runners) resolveActions(w http.ResponseWriter, r *http.Request) {
	j := f.jobOf(w, r)
	if j == nil {
		return
	}
	if r.PathValue("plan") != j.PlanID || r.PathValue("job") != j.ID {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "job not found"})
		return
	}
	var req struct {
		Actions []struct {
			Action  string `json:"action"`
			Version string `json:"version"`
		} `json:"actions"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "unreadable"})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]any{}
	errs := map[string]any{}
	for _, a := range req.Actions {
		key := a.Action + "@" + a.Version
		fa := f.actions[key]
		if fa == nil {
			errs[key] = map[string]string{"message": "Unable to resolve action " + key + ", repository or version not found"}
			continue
		}
		fa.token = "ghs_dl" + randToken()[6:]
		out[key] = map[string]any{"name": a.Action, "resolved_name": a.Action, "resolved_sha": "0123abc", "version": a.Version,
			"tar_url": f.URL + "/_tarballs/" + key, "zip_url": f.URL + "/_zipballs/" + key,
			"authentication": map[string]string{"token": fa.token, "expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}}
	}
	if len(errs) > 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"errors": errs})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"actions": out})
}

func (f *Runners) tarball(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	f.mu.Lock()
	fa := f.actions[key]
	f.mu.Unlock()
	if fa == nil {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+fa.token))
	if fa.token == "" || r.Header.Get("Authorization") != want {
		ghError(w, http.StatusNotFound, "Not Found")
		return
	}
	f.mu.Lock()
	fa.downloads++
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-gzip")
	_, _ = w.Write(fa.tarball)
}
