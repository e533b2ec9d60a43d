package hostcheck

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestRunFakeHost runs every check against a fake host: a temporary tree,
// a recording command runner and a fake Docker engine on a unix socket.
func TestRunFakeHost(t *testing.T) {
	cmd := &fakeCmd{
		paths: map[string]bool{"iptables": true, "ip6tables": true, "iptables-restore": true,
			"ip6tables-restore": true, "iptables-nft-save": true},
		outs: map[string]fakeOut{
			"iptables --version":             {out: "iptables v1.8.9 (nf_tables)\n"},
			"iptables-nft-save":              {out: saveWithDocker},
			"iptables -w -t filter -S INPUT": {out: "-P INPUT ACCEPT\n"},
		},
	}
	e := fakeEnv(t, cmd)
	host := fakeEngine(t, "1.45", TestImage)
	mkfile(t, e.Root, "/proc/self/ns/net")
	mkfile(t, e.Root, "/proc/sys/net/ipv6/conf/all/disable_ipv6")
	mkdir(t, filepath.Join(e.Root, "/etc/airlock"), 0o755)
	cfg := "state_dir = \"/var/lib/from-config\"\n[docker]\nhost = \"" + host + "\"\n"
	if err := os.WriteFile(filepath.Join(e.Root, "/etc/airlock/config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	rs := Run(context.Background(), e, Options{
		ConfigPath: "/etc/airlock/config.toml",
		StateDir:   "/var/lib/override",
		KeyFiles:   []string{"state.key", "audit.key"},
		TestImage:  TestImage,
	})
	var names []string
	for _, r := range rs {
		names = append(names, r.Name)
	}
	want := []string{"config", "concurrency", "root", "network namespaces", "veth", "ipv6 sysctls", "ping_group_range",
		"iptables tools", "iptables backend", "firewall", "docker", "test image", "docker storage", "containerd", "state dir", "state.key", "audit.key",
		"runtime dir", "clock"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("Run names = %q, want %q", names, want)
	}
	for _, r := range rs {
		switch r.Name {
		case "state dir":
			wantResult(t, r, Warn, "/var/lib/override does not exist", "install -d")
		case "state.key":
			wantResult(t, r, OK, "/var/lib/override/state.key not created yet", "")
		case "audit.key":
			wantResult(t, r, OK, "/var/lib/override/audit.key", "")
		case "runtime dir":
			wantResult(t, r, OK, "tmpfs", "")
		case "containerd":
			wantResult(t, r, Info, "not used (executor = docker); no socket", "[containerd] address")
		default:
			wantResult(t, r, OK, "", "")
		}
	}
	if Failed(rs) {
		t.Errorf("Failed(%v) = true, want false", rs)
	}
	if !Failed(append(rs, Result{Name: "x", Status: Fail})) {
		t.Errorf("Failed with a Fail result = false, want true")
	}
	if got := strings.Join(cmd.calls, "; "); got != "iptables --version; iptables-nft-save; iptables --version; iptables -w -t filter -S INPUT" {
		t.Errorf("commands run = %q", got)
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{OK: "OK", Info: "INFO", Warn: "WARN", Fail: "FAIL", Status(9): "Status(9)"} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}
