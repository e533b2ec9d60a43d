package executors

import (
	"strings"
	"testing"
)

func TestImageAllowed(t *testing.T) {
	pats := []string{"ruby:*", "registry.example.test/team/**", "alpine"}
	for _, tc := range []struct {
		image string
		want  bool
	}{
		{"ruby:3.3", true},
		{"ruby", false},
		{"ruby:3.3/evil", false}, // "*" stays within a segment
		{"registry.example.test/team/app:1", true},
		{"registry.example.test/team/sub/app@sha256:abc", true},
		{"registry.example.test/other/app:1", false},
		{"alpine", true},
		{"alpine:3", false},
		{"docker.io/library/alpine", false}, // matched as written, as gitlab-runner does
	} {
		if got := ImageAllowed(tc.image, pats); got != tc.want {
			t.Errorf("ImageAllowed(%q) = %v, want %v", tc.image, got, tc.want)
		}
	}
	if !ImageAllowed("anything:at-all", nil) {
		t.Error("no patterns must allow every image")
	}
	errs := ValidImagePatterns("docker.allowed_images", []string{"ok:*", "", "[bad"})
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), "docker.allowed_images[1]") || !strings.Contains(errs[1].Error(), `docker.allowed_images[2] "[bad"`) {
		t.Errorf("ValidImagePatterns = %v", errs)
	}
}
