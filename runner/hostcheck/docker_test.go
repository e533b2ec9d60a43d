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
	return fakeEngineInfo(t, apiVersion, map[string]any{"Driver": "overlay2"}, images...)
}

// fakeEngineInfo is fakeEngine answering GET /vX/info with info.
func fakeEngineInfo(t *testing.T, apiVersion string, info map[string]any, images ...string) string {
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
		case p == "/info":
			json.NewEncoder(w).Encode(info)
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
		{"current with image", "1.47", []string{TestImage}, TestImage, OK, "Docker 99.0.0-fake (API 1.47)", "", OK, "present", 3},
		{"minimum without image", "1.41", nil, TestImage, OK, "(API 1.41)", "", Info, "not present", 3},
		{"image not asked", "1.41", nil, "", OK, "API 1.41", "", OK, "storage driver overlay2", 2},
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

// The engine's storage driver and user remapping are reported, as
// information: a slow driver with how to make starts cheaper.
func TestCheckDockerStorage(t *testing.T) {
	tests := []struct {
		name        string
		info        map[string]any
		status      Status
		detail, fix string
		notInDetail string
	}{
		{"overlay2", map[string]any{"Driver": "overlay2"}, OK, "storage driver overlay2", "", "userns"},
		{"fuse-overlayfs", map[string]any{"Driver": "fuse-overlayfs"}, Info, "FUSE daemons", "overlay2 is faster", "userns"},
		{"vfs with userns-remap", map[string]any{"Driver": "vfs", "SecurityOptions": []string{"name=seccomp,profile=default", "name=userns"}},
			Info, "job's start; the engine remaps users (userns-remap)", "overlay2 is faster", ""},
		{"userns-remap", map[string]any{"Driver": "overlay2", "SecurityOptions": []string{"name=userns"}}, Info, "storage driver overlay2; the engine remaps users", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs := checkDocker(context.Background(), fakeEngineInfo(t, "1.41", tc.info), "")
			if len(rs) != 2 || rs[1].Name != "docker storage" {
				t.Fatalf("checkDocker = %+v, want the engine and its storage", rs)
			}
			wantResult(t, rs[1], tc.status, tc.detail, tc.fix)
			if tc.notInDetail != "" && strings.Contains(rs[1].Detail, tc.notInDetail) {
				t.Errorf("detail %q mentions %q", rs[1].Detail, tc.notInDetail)
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
