package config

import (
	"strings"
	"testing"
	"time"
)

func TestExecutorSelection(t *testing.T) {
	const runner = `
[[runners]]
name = "a"
url = "https://gitlab.example.test"
token = "glrt-abc"
executor = "%s"
`
	tests := []struct {
		name, toml, want, err string
	}{
		{name: "default", toml: ``, want: "docker"},
		{name: "top level", toml: `executor = "containerd"`, want: "containerd"},
		{name: "from runners", toml: strings.ReplaceAll(runner, "%s", "containerd"), want: "containerd"},
		{name: "agreeing", toml: `executor = "containerd"` + strings.ReplaceAll(runner, "%s", "containerd"), want: "containerd"},
		{name: "disagreeing", toml: `executor = "containerd"` + strings.ReplaceAll(runner, "%s", "docker"), err: `runners[0].executor "docker"`},
		{name: "unknown", toml: `executor = "podman"`, err: `executor "podman": must be docker or containerd`},
		{name: "bad namespace", toml: "[containerd]\nnamespace = \"a b\"", err: "containerd.namespace"},
		{name: "bad pull", toml: "[containerd]\npull_policy = \"sometimes\"", err: "containerd.pull_policy"},
		{name: "bad allowed services", toml: "executor = \"containerd\"\n[containerd]\nallowed_services = [\" \"]", err: "containerd.allowed_services[0]"},
		{name: "bad allowed pull", toml: "executor = \"containerd\"\n[containerd]\nallowed_pull_policies = [\"always\", \"\"]", err: "containerd.allowed_pull_policies[1]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(write(t, tc.toml), false)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Load = %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.ExecutorName(); got != tc.want {
				t.Fatalf("ExecutorName() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestContainerdSectionDrivesDefaults(t *testing.T) {
	c, err := Load(write(t, `executor = "containerd"
[docker]
image = "docker-image"
pull_policy = "if-not-present"
[containerd]
image = "ctrd-image"
pull_policy = "never"
stop_grace = "3s"
address = "/run/x.sock"
namespace = "ci"
snapshotter = "native"
runtime = "io.containerd.runc.v2"
`), false)
	if err != nil {
		t.Fatal(err)
	}
	if c.DefaultImage() != "ctrd-image" || c.PullPolicy() != "never" || c.Grace() != 3*time.Second {
		t.Fatalf("containerd defaults = %q %q %v", c.DefaultImage(), c.PullPolicy(), c.Grace())
	}
	c.SetPullPolicy("always")
	if c.Containerd.Pull != "always" || c.Docker.Pull != "if-not-present" {
		t.Fatalf("SetPullPolicy changed %+v", c.Containerd)
	}
	if c.Containerd.ResolvedAddress() != "/run/x.sock" || c.Containerd.Namespace != "ci" {
		t.Fatalf("containerd section = %+v", c.Containerd)
	}
}
