package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/etcdtest"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
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
	hosts := e2eFleetHosts(t, cluster, []string{"c", "a", "b"}, nil, func(e *e2eEnv) {
		e.mustRun(fv.RootToken, "secret", "set", "vault-ci", "--backend", "vault", "--vault-addr", fv.URL, "--vault-mode", "token")
		e.mustRun("", "grant", "add", "vault-ci", "--repo", "group/app", "--deliver", "env", "--var", "VAULT_TOKEN", "--scope", "policies=ci")
	})
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

// e2eFleetHosts makes one e2e host per name, each with its own state, on
// cluster under a prefix of the test's own. each, when not nil, runs on
// every host once its store is configured (registering a runner, say). admin runs on the first
// host, whose fleet key the others are then given, as an admin copies it
// to the hosts of a fleet.
func e2eFleetHosts(t *testing.T, cluster *etcdtest.Cluster, names []string, each, admin func(*e2eEnv)) map[string]*e2eEnv {
	t.Helper()
	prefix := fmt.Sprintf("/airlock-e2e-%d/", time.Now().UnixNano())
	eps := cluster.Endpoints()
	var key []byte
	hosts := map[string]*e2eEnv{}
	for _, name := range names {
		e := newE2E(t, e2eOptions{})
		f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "\n[store]\nbackend = \"etcd\"\nendpoints = [%q, %q, %q]\nprefix = %q\nheartbeat = \"2s\"\nhost = %q\n", eps[0], eps[1], eps[2], prefix, name)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if each != nil {
			each(e)
		}
		if key != nil {
			if err := os.MkdirAll(e.state, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(e.state, secrets.KeyFile), key, 0o600); err != nil {
				t.Fatal(err)
			}
		} else {
			admin(e)
			if key, err = os.ReadFile(filepath.Join(e.state, secrets.KeyFile)); err != nil {
				t.Fatal(err)
			}
		}
		hosts[name] = e
	}
	return hosts
}

// TestE2EFleetAgents runs three `airlock run` agents of the built binary,
// each with its own state, as managers of one GitLab runner on one etcd
// cluster. A grant an admin adds on c reaches the jobs every agent takes,
// each job's token its own and revoked when it ends; the grant's removal
// on a applies to the jobs of all three; an agent SIGKILLed mid-job
// has its token revoked by a peer, and once restarted reports that job
// failed without revoking it again.
func TestE2EFleetAgents(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	cluster := etcdtest.Start(t, 3)
	fv := fakevault.New(t)
	gl := fakegitlab.New(t)
	gl.SetTraceUpdateInterval(1)
	token := "glrt-" + e2eSecret("runner")
	gl.AddRunner(token)
	var grantID string
	hosts := e2eFleetHosts(t, cluster, []string{"c", "a", "b"}, func(e *e2eEnv) {
		// Three machines: three machine ids, and so three system ids.
		if err := os.MkdirAll(e.state, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(e.state, ".runner_system_id"), []byte("s_"+e2eHash(e.dir)[:12]+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// One job at a time per agent: the jobs spread over the three.
		cmd := e.command(context.Background(), "register", "--url", gl.URL, "--name", "fleet", "--limit", "1")
		cmd.Env = append(cmd.Env, "AIRLOCK_RUNNER_TOKEN="+token)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("airlock register: %v\n%s", err, out)
		}
		cfg, err := os.ReadFile(e.config)
		if err != nil {
			t.Fatal(err)
		}
		cfg = regexp.MustCompile(`(?m)^(shutdown_timeout|check_interval) = .*$`).ReplaceAll(cfg, nil)
		if err := os.WriteFile(e.config, append([]byte("check_interval = \"200ms\"\nshutdown_timeout = \"1m\"\n"), cfg...), 0o600); err != nil {
			t.Fatal(err)
		}
	}, func(e *e2eEnv) {
		e.mustRun(fv.RootToken, "secret", "set", "vault-ci", "--backend", "vault", "--vault-addr", fv.URL, "--vault-mode", "token")
		out := e.mustRun("", "grant", "add", "vault-ci", "--repo", "group/app", "--source", "gitlab", "--deliver", "env", "--var", "VAULT_TOKEN", "--scope", "policies=ci")
		if f := strings.Fields(out.Stdout); len(f) > 1 {
			grantID = f[1]
		}
	})
	if grantID == "" {
		t.Fatal("grant add printed no grant id")
	}
	if m := gl.Managers(token); len(m) != 3 {
		t.Fatalf("GitLab knows managers %v of the runner, want the three hosts'", m)
	}
	names := []string{"a", "b", "c"}
	host := map[string]string{} // runner id -> host name
	agents := map[string]*e2eProc{}
	for _, n := range names {
		agents[n] = hosts[n].start("run")
	}
	for _, n := range names {
		if !agents[n].waitOutput("agent started", time.Minute) {
			t.Fatalf("agent %s did not start:\n%s", n, agents[n].stderr.String())
		}
		host[hosts[n].runnerID()] = n
	}
	enqueue := func(script ...string) fakegitlab.JobID {
		return gl.Enqueue(fakegitlab.JobSpec{Project: "group/app", Image: testenv.TestImage, Script: script, Secrets: "vault-ci",
			Variables: []fakegitlab.Variable{{Key: "GIT_STRATEGY", Value: "none"}}})
	}
	finished := func(id fakegitlab.JobID) fakegitlab.JobState {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		st, err := gl.WaitFinished(ctx, id)
		if err != nil {
			t.Fatalf("job %d: %v\ntrace:\n%s", id, err, gl.Trace(id))
		}
		return st
	}
	ranOn := func(id fakegitlab.JobID) string {
		t.Helper()
		m := e2eRunnerRE.FindSubmatch(gl.Trace(id))
		if m == nil || host[string(m[1])] == "" {
			t.Fatalf("job %d's trace names none of the hosts' runners %v:\n%s", id, host, gl.Trace(id))
		}
		return host[string(m[1])]
	}
	const hashLine = `echo "e2e-token-hash=$(printf %s "$VAULT_TOKEN" | sha256sum | cut -c1-16)"`

	// Granted on c: six jobs over three agents, one token each.
	var ids []fakegitlab.JobID
	for range 6 {
		ids = append(ids, enqueue(hashLine, "sleep 1"))
	}
	perHost := map[string]int{}
	hashes := map[string]bool{}
	for _, id := range ids {
		if st := finished(id); st.Status != "success" {
			t.Fatalf("granted job %d: %+v\ntrace:\n%s", id, st, gl.Trace(id))
		}
		perHost[ranOn(id)]++
		m := e2eTokenHashRE.FindSubmatch(gl.Trace(id))
		if m == nil {
			t.Fatalf("job %d printed no token hash:\n%s", id, gl.Trace(id))
		}
		hashes[string(m[1])] = true
	}
	t.Logf("jobs per host: %v", perHost)
	if len(perHost) != 3 {
		t.Errorf("jobs per host %v: want each of the three agents to have run some", perHost)
	}
	if len(hashes) != len(ids) {
		t.Errorf("%d distinct tokens for %d jobs", len(hashes), len(ids))
	}
	for _, tok := range fv.ChildTokens() {
		delete(hashes, e2eHash(tok.ID))
	}
	if len(hashes) != 0 {
		t.Errorf("tokens %v the jobs printed are none of Vault's child tokens", hashes)
	}
	for deadline := time.Now().Add(30 * time.Second); len(fv.LiveChildTokens()) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if live := fv.LiveChildTokens(); len(live) != 0 {
		t.Errorf("%d child tokens live after every job ended: %s", len(live), e2eJSON(live))
	}

	// Removed on a: refused to the jobs of every agent.
	hosts["a"].mustRun("", "grant", "rm", grantID)
	issued := len(fv.ChildTokens())
	ids = ids[:0]
	for range 3 {
		ids = append(ids, enqueue(hashLine))
	}
	for _, id := range ids {
		st := finished(id)
		if st.Status != "failed" || !strings.Contains(string(gl.Trace(id)), "is not granted") {
			t.Errorf("job %d on %s after the grant's removal: %+v; trace:\n%s", id, ranOn(id), st, gl.Trace(id))
		}
	}
	if n := len(fv.ChildTokens()); n != issued {
		t.Errorf("%d tokens issued after the grant's removal", n-issued)
	}

	// Granted again; the agent that takes a long job is killed in it: a
	// peer agent revokes its token.
	hosts["c"].mustRun("", "grant", "add", "vault-ci", "--repo", "group/app", "--source", "gitlab", "--deliver", "env", "--var", "VAULT_TOKEN", "--scope", "policies=ci")
	long := enqueue(hashLine, "echo e2e-long-started", "sleep 300")
	for deadline := time.Now().Add(time.Minute); !strings.Contains(string(gl.Trace(long)), "e2e-long-started"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the long job never started:\n%s", gl.Trace(long))
		}
	}
	victim := ranOn(long)
	m := e2eTokenHashRE.FindSubmatch(gl.Trace(long))
	var accessor string
	for _, tok := range fv.ChildTokens() {
		if m != nil && e2eHash(tok.ID) == string(m[1]) {
			accessor = tok.Accessor
		}
	}
	if accessor == "" {
		t.Fatalf("the long job's token is none of Vault's:\n%s", gl.Trace(long))
	}
	agents[victim].signal(syscall.SIGKILL)
	agents[victim].wait(30 * time.Second)
	revoked := func() bool {
		for _, tok := range fv.ChildTokens() {
			if tok.Accessor == accessor {
				return tok.Revoked
			}
		}
		return false
	}
	for deadline := time.Now().Add(time.Minute); !revoked() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if !revoked() {
		t.Fatalf("the token of %s's job was not revoked by a peer after %s was killed", victim, victim)
	}
	revokes := fv.Requests("POST /v1/auth/token/revoke-accessor")
	agents[victim] = hosts[victim].start("run")
	if st := finished(long); st.Status != "failed" || st.FailureReason != "runner_system_failure" {
		t.Errorf("%s's crashed job after its restart: %+v\nagent:\n%s", victim, st, agents[victim].stderr.String())
	}
	if n := fv.Requests("POST /v1/auth/token/revoke-accessor"); n != revokes {
		t.Errorf("the restarted agent %s revoked %d tokens; its peer had revoked them", victim, n-revokes)
	}
	for _, n := range names {
		agents[n].signal(syscall.SIGTERM)
	}
	for _, n := range names {
		if res := agents[n].wait(time.Minute); res.Code != 0 {
			t.Errorf("agent %s after SIGTERM: %s", n, res)
		}
		if ids := hosts[n].containers(); len(ids) > 0 {
			t.Errorf("containers of host %s left: %v", n, ids)
		}
	}
}

// e2eRunnerRE finds the runner a GitLab job ran on in its trace.
var e2eRunnerRE = regexp.MustCompile(`Running job \S+ on runner (\S+)`)
