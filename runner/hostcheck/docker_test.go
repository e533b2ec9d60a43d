package hostcheck

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fakeEngine serves the part of the Docker Engine API the checks use
// (GET/HEAD /_ping, GET /vX/version, GET /vX/images/NAME/json) on a real
// unix socket, and returns the DOCKER_HOST-style address.
func fakeEngine(t *testing.T, apiVersion string, images ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hc") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	versioned := regexp.MustCompile(`^/v[0-9.]+(/.*)$`)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Api-Version", apiVersion)
		w.Header().Set("Ostype", "linux")
		p := r.URL.Path
		if m := versioned.FindStringSubmatch(p); m != nil {
			p = m[1]
		}
		w.Header().Set("Content-Type", "application/json")
		switch {
		case p == "/_ping":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write([]byte("OK"))
		case p == "/version":
			json.NewEncoder(w).Encode(map[string]string{"Version": "99.0.0-fake", "ApiVersion": apiVersion, "MinAPIVersion": "1.12"})
		case strings.HasPrefix(p, "/images/") && strings.HasSuffix(p, "/json"):
			name := strings.TrimSuffix(strings.TrimPrefix(p, "/images/"), "/json")
			for _, img := range images {
				if img == name {
					json.NewEncoder(w).Encode(map[string]string{"Id": "sha256:0123"})
					return
				}
			}
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"message": "No such image: " + name})
		default:
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"message": "page not found"})
		}
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return "unix://" + sock
}

func TestCheckDocker(t *testing.T) {
	tests := []struct {
		name       string
		api        string
		images     []string
		image      string
		status     Status
		detail     string
		fix        string
		imgStatus  Status
		imgDetail  string
		wantResult int
	}{
		{"current with image", "1.47", []string{TestImage}, TestImage, OK, "Docker 99.0.0-fake (API 1.47)", "", OK, "present", 2},
		{"minimum without image", "1.41", nil, TestImage, OK, "(API 1.41)", "", Info, "not present", 2},
		{"image not asked", "1.41", nil, "", OK, "API 1.41", "", 0, "", 1},
		{"too old", "1.40", nil, TestImage, Fail, "API 1.40, older than 1.41", "upgrade Docker", 0, "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			host := fakeEngine(t, tc.api, tc.images...)
			rs := checkDocker(context.Background(), host, tc.image)
			if len(rs) != tc.wantResult {
				t.Fatalf("checkDocker returned %d results (%+v), want %d", len(rs), rs, tc.wantResult)
			}
			wantResult(t, rs[0], tc.status, tc.detail, tc.fix)
			if len(rs) > 1 {
				wantResult(t, rs[1], tc.imgStatus, tc.imgDetail, "")
			}
		})
	}
}

func TestCheckDockerUnreachable(t *testing.T) {
	dir, err := os.MkdirTemp("", "hc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	host := "unix://" + filepath.Join(dir, "nobody.sock")
	rs := checkDocker(context.Background(), host, TestImage)
	if len(rs) != 1 {
		t.Fatalf("checkDocker returned %d results, want 1", len(rs))
	}
	wantResult(t, rs[0], Fail, "does not answer", "systemctl start docker")
	if !strings.Contains(rs[0].Detail, "nobody.sock") {
		t.Errorf("detail %q does not name the socket", rs[0].Detail)
	}
}
