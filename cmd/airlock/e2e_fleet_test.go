package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/etcdtest"
	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/secrets"
)

// TestE2EFleetPeerRevokesKilledHost runs three airlock processes of the
// built binary with separate state dirs on one etcd cluster: the admin
// stores a Vault secret and grant from host C; hosts A and B each run a
// long job holding a Vault child token; A is SIGKILLed mid-job; B (whose
// exec keeps the fleet's peer monitor running) revokes A's token — not
// its own — and records peer_revoked in a trail of its own; A's next
// start cleans up without revoking again.
func TestE2EFleetPeerRevokesKilledHost(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	cluster := etcdtest.Start(t, 3)
	fv := fakevault.New(t)
	prefix := fmt.Sprintf("/airlock-e2e-%d/", time.Now().UnixNano())
	var key []byte
	hosts := map[string]*e2eEnv{}
	for _, name := range []string{"c", "a", "b"} {
		e := newE2E(t, e2eOptions{})
		f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		eps := cluster.Endpoints()
		fmt.Fprintf(f, "\n[store]\nbackend = \"etcd\"\nendpoints = [%q, %q, %q]\nprefix = %q\nheartbeat = \"2s\"\nhost = %q\n", eps[0], eps[1], eps[2], prefix, name)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if key != nil {
			if err := os.MkdirAll(e.state, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(e.state, secrets.KeyFile), key, 0o600); err != nil {
				t.Fatal(err)
			}
		} else {
			e.mustRun(fv.RootToken, "secret", "set", "vault-ci", "--backend", "vault", "--vault-addr", fv.URL, "--vault-mode", "token")
			e.mustRun("", "grant", "add", "vault-ci", "--repo", "group/app", "--deliver", "env", "--var", "VAULT_TOKEN", "--scope", "policies=ci")
			if key, err = os.ReadFile(filepath.Join(e.state, secrets.KeyFile)); err != nil {
				t.Fatal(err)
			}
		}
		hosts[name] = e
	}
	tokenOf := func(out string) fakevault.Token {
		t.Helper()
		m := e2eTokenHashRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("job printed no token hash:\n%s", out)
		}
		for _, tok := range fv.ChildTokens() {
			if e2eHash(tok.ID) == m[1] {
				return tok
			}
		}
		t.Fatalf("the job's token is none of the fake's child tokens")
		return fakevault.Token{}
	}
	token := func(accessor string) fakevault.Token {
		for _, tok := range fv.ChildTokens() {
			if tok.Accessor == accessor {
				return tok
			}
		}
		t.Fatalf("no token with accessor %s", accessor)
		return fakevault.Token{}
	}
	start := func(e *e2eEnv) (*e2eProc, fakevault.Token) {
		p := e.start("exec", "--repo", "group/app", "--ref", "main", e2eJob("vault-long.yml"))
		if !p.waitOutput("e2e-long-started", 90*time.Second) {
			t.Fatalf("long job did not start:\n%s%s", p.stdout.String(), p.stderr.String())
		}
		return p, tokenOf(p.stdout.String())
	}
	pb, tb := start(hosts["b"])
	pa, ta := start(hosts["a"])
	jobA := e2eJobID(t, pa.stdout.String())

	pa.signal(syscall.SIGKILL)
	pa.wait(30 * time.Second)
	deadline := time.Now().Add(60 * time.Second)
	for !token(ta.Accessor).Revoked && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !token(ta.Accessor).Revoked {
		t.Fatalf("host a's token was not revoked by a peer after a was killed\nb's log:\n%s", pb.stderr.String())
	}
	if token(tb.Accessor).Revoked {
		t.Errorf("host b's own running job lost its token")
	}
	// b's own trail of the peer revocation, sealed once the round (and
	// its marking of a's leases done) is over.
	var peerTrail string
	var recs []audit.Record
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		m, _ := filepath.Glob(filepath.Join(hosts["b"].state, "audit", "peer-revoke-a-*"+audit.SpoolExt))
		if len(m) == 0 {
			continue
		}
		peerTrail = m[0]
		if recs, _ = readTrailFile(peerTrail); len(recs) > 0 && recs[len(recs)-1].Type == audit.Seal {
			break
		}
	}
	if len(recs) == 0 || recs[len(recs)-1].Type != audit.Seal {
		t.Fatalf("host b wrote no sealed peer-revocation trail (%s): %v", peerTrail, e2eTypes(recs))
	}
	found := false
	for _, r := range recs {
		if r.Type == "peer_revoked" && r.Fields["peer"] == "a" && r.Fields["peer_job"] == jobA {
			found = true
		}
	}
	if !found {
		t.Errorf("peer trail lacks peer_revoked for a's job %s: %v", jobA, e2eTypes(recs))
	}
	pb.signal(syscall.SIGINT)
	if res := pb.wait(time.Minute); res.Code != exitCanceled {
		t.Errorf("exec on b after SIGINT: %s", res)
	}

	if v := hosts["b"].run("", "audit", "verify", peerTrail); v.Code != 0 {
		t.Errorf("audit verify of the peer trail: %s", v)
	}
	// a comes back: recovery cleans its container and does not revoke again.
	revokes := fv.Requests("POST /v1/auth/token/revoke-accessor")
	next := hosts["a"].run("", "exec", "--repo", "group/app", "--ref", "main", e2eJob("plain.yml"))
	if next.Code != 0 {
		t.Fatalf("exec on a after its death: %s", next)
	}
	if n := fv.Requests("POST /v1/auth/token/revoke-accessor"); n != revokes {
		t.Errorf("the returning host revoked %d more tokens; a peer had revoked them", n-revokes)
	}
	if ids := hosts["a"].containers(); len(ids) > 0 {
		t.Errorf("containers of host a left after its recovery: %v", ids)
	}
	// a's recovered trail verifies on c, which holds no key of a's own:
	// a registered its audit key with the fleet when it started.
	if v := hosts["c"].run("", "audit", "verify", hosts["a"].trail(jobA)); v.Code != 0 || !strings.Contains(v.Stdout, ": ok: ") {
		t.Errorf("audit verify of a's trail on c: %s", v)
	}
}
