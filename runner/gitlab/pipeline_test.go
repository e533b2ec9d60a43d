package gitlab

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestToJobRefusesUnsupported(t *testing.T) {
	raw, err := os.ReadFile("testdata/job-example.json")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		f    func(m map[string]any)
		want string
	}{
		{"another secrets provider", func(m map[string]any) {
			m["secrets"] = map[string]any{"X": map[string]any{"gcp_secret_manager": map[string]any{"name": "x"}}}
		}, "gcp_secret_manager provider is not supported"},
		{"another Vault engine", func(m map[string]any) {
			m["secrets"] = map[string]any{"X": map[string]any{"vault": map[string]any{"engine": map[string]any{"name": "database", "path": "db"}, "path": "p", "field": "f"}}}
		}, "engine \"database\" is not supported"},
		{"unknown report type", func(m map[string]any) {
			delete(m, "secrets")
			m["artifacts"] = []any{map[string]any{"name": "x", "paths": []string{"x"}, "artifact_type": "nonsense", "artifact_format": "raw"}}
		}, "artifacts:reports:nonsense"},
		{"wrong report format", func(m map[string]any) {
			delete(m, "secrets")
			m["artifacts"] = []any{map[string]any{"name": "junit.xml", "paths": []string{"x"}, "artifact_type": "junit", "artifact_format": "zip"}}
		}, "artifact_format"},
		{"unknown pull policy", func(m map[string]any) {
			delete(m, "secrets")
			m["image"] = map[string]any{"name": "alpine", "pull_policy": []string{"if-not-present", "sometimes"}}
		}, `image.pull_policy[1]: pull policy "sometimes"`},
		{"another platform", func(m map[string]any) {
			delete(m, "secrets")
			m["image"] = map[string]any{"name": "alpine", "executor_opts": map[string]any{"docker": map[string]any{"platform": "windows/amd64"}}}
		}, `image.docker.platform "windows/amd64" is not supported`},
		{"user not a user", func(m map[string]any) {
			delete(m, "secrets")
			m["image"] = map[string]any{"name": "alpine", "executor_opts": map[string]any{"docker": map[string]any{"user": "root --privileged"}}}
		}, `image.docker.user "root --privileged": not a user name`},
		{"user from a secret", func(m map[string]any) {
			delete(m, "secrets")
			m["variables"] = append(m["variables"].([]any), map[string]any{"key": "DEPLOY_PASSWORD", "value": "hunter2hunter2", "public": false, "masked": true})
			m["image"] = map[string]any{"name": "alpine", "executor_opts": map[string]any{"docker": map[string]any{"user": "u${DEPLOY_PASSWORD}"}}}
		}, "image.docker.user: DEPLOY_PASSWORD is not a public variable"},
		{"service platform", func(m map[string]any) {
			delete(m, "secrets")
			m["services"] = []any{map[string]any{"name": "postgres:16", "executor_opts": map[string]any{"docker": map[string]any{"platform": "linux/s390x"}}}}
		}, `services[0].docker.platform "linux/s390x" is not supported`},
		{"service user", func(m map[string]any) {
			delete(m, "secrets")
			m["services"] = []any{map[string]any{"name": "postgres:16", "executor_opts": map[string]any{"docker": map[string]any{"user": "999"}}}}
		}, "services[0].docker.user is not supported"},
		{"service pull policy", func(m map[string]any) {
			delete(m, "secrets")
			m["services"] = []any{map[string]any{"name": "postgres:16", "pull_policy": []string{""}}}
		}, "services[0].pull_policy[0]"},
		{"sources attempts", func(m map[string]any) {
			delete(m, "secrets")
			m["variables"] = append(m["variables"].([]any), map[string]any{"key": "GET_SOURCES_ATTEMPTS", "value": "11", "public": true})
		}, `variable GET_SOURCES_ATTEMPTS "11": must be a number from 1 to 10`},
		{"secrets attempts", func(m map[string]any) {
			delete(m, "secrets")
			m["variables"] = append(m["variables"].([]any), map[string]any{"key": "SECRETS_RETRIEVAL_ATTEMPTS", "value": "0", "public": true})
		}, `variable SECRETS_RETRIEVAL_ATTEMPTS "0": must be a number from 1 to 10`},
		{"no TLS verification", func(m map[string]any) {
			delete(m, "secrets")
			m["variables"] = append(m["variables"].([]any), map[string]any{"key": "GIT_SSL_NO_VERIFY", "value": "true", "public": true})
		}, "variable GIT_SSL_NO_VERIFY is not supported"},
		{"pre_get_sources_script", func(m map[string]any) {
			delete(m, "secrets")
			m["hooks"] = []any{map[string]any{"name": "pre_get_sources_script", "script": []string{"echo x"}}}
		}, "pre_get_sources_script"},
		{"unknown cache when", func(m map[string]any) {
			delete(m, "secrets")
			m["cache"] = []any{map[string]any{"key": "k", "paths": []string{"x"}, "when": "sometimes"}}
		}, "cache:when"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ParseJobResponse(mutateRaw(t, raw, tc.f))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := resp.ToJob(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ToJob() = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// image: pull_policy and docker: user and platform reach the job.
func TestToJobImageOptions(t *testing.T) {
	raw, err := os.ReadFile("testdata/job-example.json")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ParseJobResponse(mutateRaw(t, raw, func(m map[string]any) {
		delete(m, "secrets")
		m["variables"] = append(m["variables"].([]any), map[string]any{"key": "BUILD_UID", "value": "1001", "public": true})
		m["image"] = map[string]any{"name": "alpine", "pull_policy": []string{"always", "if-not-present"},
			"executor_opts": map[string]any{"docker": map[string]any{"user": "${BUILD_UID}:100", "platform": "linux/" + runtime.GOARCH}}}
		m["services"] = []any{map[string]any{"name": "postgres:16", "pull_policy": []string{"never"}}}
	}))
	if err != nil {
		t.Fatal(err)
	}
	j, err := resp.ToJob()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(j.Pull, []string{"always", "if-not-present"}) || j.User != "1001:100" {
		t.Errorf("job pull %v, user %q; want [always if-not-present], 1001:100", j.Pull, j.User)
	}
	if len(j.Services) != 1 || !reflect.DeepEqual(j.Services[0].Pull, []string{"never"}) {
		t.Errorf("services %+v, want postgres with pull [never]", j.Services)
	}
}

// The image's ENTRYPOINT wraps the steps unless image:entrypoint names
// another (which then does) or clears it or names a plain shell.
func TestToJobImageEntrypoint(t *testing.T) {
	raw, err := os.ReadFile("testdata/job-example.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ep        any
		fromImage bool
		want      []string
	}{
		{ep: nil, fromImage: true},
		{ep: []string{}, fromImage: true},
		{ep: []string{""}},
		{ep: []string{"/bin/sh", "-c"}},
		{ep: []string{"bash"}},
		{ep: []string{"/docker-entrypoint.sh"}, want: []string{"/docker-entrypoint.sh"}},
		{ep: []string{"/usr/bin/tini", "--"}, want: []string{"/usr/bin/tini", "--"}},
	} {
		resp, err := ParseJobResponse(mutateRaw(t, raw, func(m map[string]any) {
			delete(m, "secrets")
			im := map[string]any{"name": "alpine"}
			if tc.ep != nil {
				im["entrypoint"] = tc.ep
			}
			m["image"] = im
		}))
		if err != nil {
			t.Fatal(err)
		}
		j, err := resp.ToJob()
		if err != nil {
			t.Fatalf("entrypoint %v: %v", tc.ep, err)
		}
		if j.EntrypointFromImage != tc.fromImage || !reflect.DeepEqual(j.StepEntrypoint, tc.want) {
			t.Errorf("entrypoint %v: from image %v, step entrypoint %q; want %v, %q", tc.ep, j.EntrypointFromImage, j.StepEntrypoint, tc.fromImage, tc.want)
		}
	}
}

func mutateRaw(t *testing.T, raw []byte, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type memCache struct{ opened []string }

func (m *memCache) Open(project, key string, protected bool) (*os.File, error) {
	m.opened = append(m.opened, key)
	return nil, fs.ErrNotExist
}
func (m *memCache) ModTime(string, string, bool) time.Time { return time.Time{} }
func (m *memCache) Save(string, string, bool, func(io.Writer) error) error {
	return nil
}

// Restore tries the key, fallback_keys, then CACHE_FALLBACK_KEY, which an
// unprotected ref may not point at a -protected cache.
func TestRestoreCacheKeyOrder(t *testing.T) {
	for _, tc := range []struct {
		name      string
		protected bool
		fallback  string
		want      []string
	}{
		{"unprotected", false, "main-protected", []string{"k-feature", "deps", "other"}},
		{"unprotected, trailing dot", false, "main-protected. ", []string{"k-feature", "deps", "other"}},
		{"unprotected, plain fallback", false, "main", []string{"k-feature", "deps", "other", "main"}},
		{"protected", true, "main-protected", []string{"k-feature", "deps", "other", "main-protected"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.protected
			resp := &JobResponse{ID: 1, Token: "t", GitInfo: GitInfo{Ref: "feature", Protected: &p},
				Variables: []JobVariable{{Key: "CI_COMMIT_REF_NAME", Value: "feature"}, {Key: "CACHE_FALLBACK_KEY", Value: tc.fallback}},
				Cache:     []JobCache{{Key: "k-$CI_COMMIT_REF_NAME", Paths: []string{"vendor"}, Policy: "pull", FallbackKeys: []string{"deps", "other"}}}}
			mc := &memCache{}
			pl := NewPipeline(nil, resp, PipelineOptions{ProjectDir: "/builds", Cache: mc})
			var out strings.Builder
			pl.restoreCaches(context.Background(), t.TempDir(), &out)
			if !reflect.DeepEqual(mc.opened, tc.want) {
				t.Errorf("keys tried = %q, want %q\n%s", mc.opened, tc.want, out.String())
			}
		})
	}
}

// GIT_CLONE_PATH: expanded with $CI_BUILDS_DIR and public variables, it
// must name a clean path below the builds directory.
func TestCloneDir(t *testing.T) {
	for _, tc := range []struct{ value, want, err string }{
		{"", "", ""},
		{"$CI_BUILDS_DIR/go/src/$CI_PROJECT_PATH", "/builds/go/src/group/app", ""},
		{"/builds/x/", "/builds/x", ""},
		{"$CI_BUILDS_DIR", "", ""},
		{"/srv/app", "", "must be below the builds directory /builds"},
		{"/buildsx/app", "", "must be below the builds directory"},
		{"go/src/app", "", "must be an absolute path"},
		{"$CI_BUILDS_DIR/../etc", "", "must be an absolute path without . or .."},
		{"$CI_BUILDS_DIR/$SECRET_PART", "", "SECRET_PART is not a public variable"},
	} {
		r := &JobResponse{Variables: []JobVariable{
			{Key: "CI_PROJECT_PATH", Value: "group/app", Public: true},
			{Key: "SECRET_PART", Value: "hunter2-secret", Masked: true},
			{Key: "GIT_CLONE_PATH", Value: tc.value, Public: true},
		}}
		got, err := r.CloneDir("/builds")
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("GIT_CLONE_PATH %q: %q, %v; want %q", tc.value, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("GIT_CLONE_PATH %q: %q, %v; want an error containing %q", tc.value, got, err, tc.err)
		case err != nil && strings.Contains(err.Error(), "hunter2"):
			t.Errorf("GIT_CLONE_PATH %q: the error shows a secret: %v", tc.value, err)
		}
	}
}
