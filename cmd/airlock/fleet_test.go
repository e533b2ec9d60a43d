package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv/etcdtest"
	"github.com/airlock-ci/airlock/secrets"
)

// fleetHost is one build host of the fleet as the admin CLI sees it: a
// state dir with the fleet's key and a config naming the etcd cluster.
type fleetHost struct {
	t      *testing.T
	bin    string
	state  string
	config string
}

func (h *fleetHost) run(stdin string, args ...string) (string, error) {
	h.t.Helper()
	cmd := exec.Command(h.bin, append([]string{"--config", h.config, "--state-dir", h.state}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "AIRLOCK_CONFIG=", "AIRLOCK_STATE_DIR=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (h *fleetHost) must(stdin string, args ...string) string {
	h.t.Helper()
	out, err := h.run(stdin, args...)
	if err != nil {
		h.t.Fatalf("airlock %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestFleetAdminCLIAcrossThreeHosts runs the built binary as three
// hosts (separate state dirs and configs) on one real etcd cluster: what
// one host's admin stores, the others list, and a grant import is all or
// nothing.
func TestFleetAdminCLIAcrossThreeHosts(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	bin := e2eBinary(t)
	root := t.TempDir()
	prefix := fmt.Sprintf("/airlock-cli-%d/", time.Now().UnixNano())
	var hosts []*fleetHost
	var key []byte
	for i := range 3 {
		h := &fleetHost{t: t, bin: bin, state: filepath.Join(root, fmt.Sprintf("host%d", i)), config: filepath.Join(root, fmt.Sprintf("host%d.toml", i))}
		if err := os.MkdirAll(h.state, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := fmt.Sprintf("[store]\nbackend = \"etcd\"\nendpoints = [%q, %q, %q]\nprefix = %q\nmax_staleness = \"1m\"\n",
			cluster.Endpoints()[0], cluster.Endpoints()[1], cluster.Endpoints()[2], prefix)
		if err := os.WriteFile(h.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if key != nil {
			if err := os.WriteFile(filepath.Join(h.state, secrets.KeyFile), key, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if i == 0 {
			h.must("fleet-value-canary-1", "secret", "set", "deploy")
			var err error
			if key, err = os.ReadFile(filepath.Join(h.state, secrets.KeyFile)); err != nil {
				t.Fatal(err)
			}
		}
		hosts = append(hosts, h)
	}
	hosts[1].must("", "grant", "add", "deploy", "--repo", "acme/*", "--deliver", "env")
	hosts[2].must("", "policy", "set", "--repo", "acme/**", "--egress", "registry.test:443")
	for i, h := range hosts {
		if out := h.must("", "secret", "ls"); !strings.Contains(out, "deploy") {
			t.Errorf("host %d: secret ls lacks deploy:\n%s", i, out)
		}
		if out := h.must("", "grant", "ls"); !strings.Contains(out, "acme/*") {
			t.Errorf("host %d: grant ls lacks the grant:\n%s", i, out)
		}
		if out := h.must("", "policy", "ls"); !strings.Contains(out, "registry.test:443") {
			t.Errorf("host %d: policy ls lacks the policy:\n%s", i, out)
		}
		if out := h.must("", "grant", "check", "--repo", "acme/app", "--ref", "main", "deploy"); !strings.Contains(strings.ToLower(out), "grant") {
			t.Errorf("host %d: grant check:\n%s", i, out)
		}
	}
	// All or nothing: an import naming a missing secret writes nothing.
	bad := filepath.Join(root, "bad.toml")
	if err := os.WriteFile(bad, []byte("[[grant]]\nsecret = \"deploy\"\nrepo = \"other/*\"\ndeliver = \"env\"\n\n[[grant]]\nsecret = \"missing\"\nrepo = \"other/*\"\ndeliver = \"env\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := hosts[0].run("", "grant", "import", bad); err == nil || !strings.Contains(out, "missing") {
		t.Errorf("grant import with a missing secret = %v\n%s; want a refusal naming it", err, out)
	}
	for i, h := range hosts {
		if out := h.must("", "grant", "ls"); strings.Contains(out, "other/*") {
			t.Errorf("host %d: a refused import left a grant:\n%s", i, out)
		}
	}
	// doctor says whether this host's key is the fleet's.
	out, _ := hosts[1].run("", "doctor")
	if !strings.Contains(out, "OK    fleet store") || !strings.Contains(out, "key id sha256:") {
		t.Errorf("doctor on a fleet host lacks the fleet store check:\n%s", out)
	}
	// A host with another sealing key is refused.
	stranger := &fleetHost{t: t, bin: bin, state: filepath.Join(root, "stranger"), config: hosts[0].config}
	if out, err := stranger.run("", "policy", "set", "--repo", "x/*", "--egress", "a.test:443"); err == nil || !strings.Contains(out, "not the fleet's sealing key") {
		t.Errorf("policy set with another key = %v\n%s; want a refusal", err, out)
	}
	// A trail signed on host 0 verifies on host 2 once host 0 registered
	// its audit key with the fleet.
	hosts[0].must("", "audit", "pubkey")
	trail := fleetTrail(t, hosts[0].state)
	if out, err := hosts[2].run("", "audit", "verify", trail); err == nil {
		t.Errorf("host 2 verified host 0's trail before host 0 registered its key:\n%s", out)
	}
	hosts[0].must("", "audit", "pubkey", "--register")
	if out := hosts[2].must("", "audit", "verify", trail); !strings.Contains(out, ": ok: job fleet-job") {
		t.Errorf("host 2 audit verify of host 0's trail:\n%s", out)
	}
	if out, _ := stranger.run("", "doctor"); !strings.Contains(out, "FAIL  fleet store") || !strings.Contains(out, "not the fleet's sealing key") {
		t.Errorf("doctor with another key lacks a failed fleet store check:\n%s", out)
	}
	// etcd never saw the value.
	for i := range 3 {
		cluster.StopMember(i)
	}
	for i := range 3 {
		data, _ := os.ReadFile(filepath.Join(cluster.DataDir(i), "member", "snap", "db"))
		if strings.Contains(string(data), "fleet-value-canary-1") {
			t.Errorf("etcd member %d's database holds the secret value in clear", i)
		}
	}
}

// fleetTrail writes and seals a one-record trail signed by the audit key
// of state, and returns its path.
func fleetTrail(t *testing.T, state string) string {
	t.Helper()
	key, err := audit.LoadKey(audit.KeyPath(state))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := audit.Open(filepath.Join(t.TempDir(), "spool"), "host0", "fleet-job", key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := tr.Append(ctx, audit.JobAccepted, audit.Fields{audit.FieldRepo: "acme/app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Seal(ctx, "done"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	return tr.Path()
}
