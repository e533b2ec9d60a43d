package gitlab

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"reflect"
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
		{"job image entrypoint", func(m map[string]any) {
			delete(m, "secrets")
			m["image"] = map[string]any{"name": "alpine", "entrypoint": []string{"/docker-entrypoint.sh"}}
		}, "image.entrypoint"},
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

func TestServiceAliases(t *testing.T) {
	tests := map[string][]string{
		"tutum/wordpress:latest": {"tutum__wordpress", "tutum-wordpress"},
		"postgres:13":            {"postgres"},
		"registry.example.com:5000/group/sub/postgres:13": {"registry.example.com__group__sub__postgres", "registry.example.com-group-sub-postgres"},
		"mysql@sha256:0123abcd":                           {"mysql"},
		"airlock-test:svc":                                {"airlock-test"},
	}
	for in, want := range tests {
		if got := ServiceAliases(in); !reflect.DeepEqual(got, want) {
			t.Errorf("ServiceAliases(%q) = %q, want %q", in, got, want)
		}
	}
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
