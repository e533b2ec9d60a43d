package main

// End-to-end tests of the secrets broker and the audit trail through the
// real airlock binary, as an admin (secret, grant, audit) and a user
// (exec) run it. Each test has its own state directory and configuration.

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
)

// e2eFakeHosts is the gateway's hosts table for the fake internet (names
// of testenv.FakeHosts; wildcards spelled out).
func e2eFakeHosts() map[string]string {
	return map[string]string{
		"api.allowed.test": testenv.AllowedAddr.String(),
		"allowed.test":     testenv.AllowedAddr.String(),
		"evil.test":        testenv.ForbiddenAddr.String(),
		"www.wild.test":    testenv.WildAddr.String(),
		"other.test":       testenv.OtherAddr.String(),
	}
}

func TestE2EGrantedAndRefused(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	e := newE2E(t, e2eOptions{})
	token, fileValue := e2eSecret("deploy"), e2eSecret("deployfile")
	e.mustRun(token+"\n", "secret", "set", "deploy-token")
	e.mustRun("", "grant", "add", "deploy-token", "--repo", "group/app", "--ref", "main", "--protected-only",
		"--env", "production", "--deliver", "env", "--var", "DEPLOY_TOKEN")
	valueFile := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(valueFile, []byte(fileValue), 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustRun("", "secret", "set", "deploy-file", "--from-file", valueFile)
	e.mustRun("", "grant", "add", "deploy-file", "--repo", "group/app", "--deliver", "file", "--var", "DEPLOY_FILE")
	if err := os.Remove(valueFile); err != nil {
		t.Fatal(err)
	}
	job := e2eJob("granted-env.yml")

	t.Run("granted", func(t *testing.T) {
		res := e.run("", "exec", "--repo", "group/app", "--ref", "main", "--protected", "--env", "production", "-e", "WANT="+e2eHash(token), job)
		if res.Code != 0 || !strings.Contains(res.Stdout, "e2e-token-ok") {
			t.Fatalf("exec of the granted job: want exit 0 and e2e-token-ok; %s", res)
		}
		recs := e.records(e.trail(e2eJobID(t, res.Stdout)))
		if _, ok := e2eFind(recs, audit.GrantDecision, func(r audit.Record) bool { return r.String(audit.FieldDecision) == "granted" }); !ok {
			t.Errorf("trail of the granted job has no granted grant_decision: %v", e2eTypes(recs))
		}
	})

	refusals := []struct {
		name    string
		args    []string
		wantOut []string // besides secret, repo and the grant add line
	}{
		{"other ref", []string{"--ref", "feature", "--protected", "--env", "production"}, []string{`"feature"`, "production", `ref "feature" does not match "main"`}},
		{"unprotected", []string{"--ref", "main", "--env", "production"}, []string{`"main"`, "production", "protected"}},
		{"other environment", []string{"--ref", "main", "--protected", "--env", "staging"}, []string{`"main"`, "staging"}},
	}
	for _, tc := range refusals {
		t.Run("refused "+tc.name, func(t *testing.T) {
			args := append([]string{"exec", "--repo", "group/app"}, tc.args...)
			res := e.run("", append(args, "-e", "WANT="+e2eHash(token), job)...)
			if res.Code != exitRefused {
				t.Fatalf("exec %v: exit %d, want %d; %s", tc.args, res.Code, exitRefused, res)
			}
			out := res.Output()
			for _, want := range append([]string{"deploy-token", `"group/app"`, "airlock grant add deploy-token --repo group/app"}, tc.wantOut...) {
				if !strings.Contains(out, want) {
					t.Errorf("exec %v output lacks %q:\n%s", tc.args, want, out)
				}
			}
			if strings.Contains(out, "e2e-script-ran") {
				t.Errorf("exec %v: the script of a refused job ran:\n%s", tc.args, out)
			}
			recs := e.records(e.trail(e2eJobID(t, res.Stdout)))
			if _, ok := e2eFind(recs, audit.GrantDecision, func(r audit.Record) bool { return r.String(audit.FieldDecision) == "denied" }); !ok {
				t.Errorf("trail of the refused job has no denied grant_decision: %v", e2eTypes(recs))
			}
			for _, typ := range []audit.EventType{audit.CredentialMinted, audit.StepStarted} {
				if _, ok := e2eFind(recs, typ, nil); ok {
					t.Errorf("trail of the refused job has a %s record: %v", typ, e2eTypes(recs))
				}
			}
		})
	}

	t.Run("file delivery", func(t *testing.T) {
		res := e.run("", "exec", "--repo", "group/app", "--ref", "feature", "-e", "WANT="+e2eHash(fileValue), e2eJob("granted-file.yml"))
		if res.Code != 0 || !strings.Contains(res.Stdout, "e2e-file-ok") || !strings.Contains(res.Stdout, "e2e-file-path=/run/airlock/") {
			t.Fatalf("exec of the file job: want exit 0, a path under /run/airlock and e2e-file-ok; %s", res)
		}
	})

	t.Run("grant check", func(t *testing.T) {
		res := e.run("", "grant", "check", "--repo", "group/app", "--ref", "feature", "--protected", "--env", "production", "deploy-token")
		if res.Code != 1 {
			t.Errorf("grant check of a near miss: exit %d, want 1; %s", res.Code, res)
		}
		for _, want := range []string{"DENIED", "deploy-token", "does not match", `ref "feature" does not match "main"`, "to allow it: airlock grant add deploy-token"} {
			if !strings.Contains(res.Stdout, want) {
				t.Errorf("grant check output lacks %q:\n%s", want, res.Stdout)
			}
		}
		res = e.run("", "grant", "check", "--repo", "group/app", "--ref", "main", "--protected", "--env", "production", "deploy-token")
		if res.Code != 0 || !strings.Contains(res.Stdout, "ALLOWED") || !strings.Contains(res.Stdout, "DEPLOY_TOKEN") {
			t.Errorf("grant check of a match: want exit 0, ALLOWED and DEPLOY_TOKEN; %s", res)
		}
	})

	e.assertNoLeak([]string{token, fileValue}, nil)
}

var e2eSurrogateRE = regexp.MustCompile(`e2e-surrogate-hash=([0-9a-f]{16})`)

func TestE2EProxySurrogate(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	fi := testenv.NewFakeInternet(t)
	e := newE2E(t, e2eOptions{Hosts: e2eFakeHosts(), UpstreamCA: fi.CA.WriteFile(t), Ceiling: []string{"api.allowed.test:443", "*.wild.test:80"}})
	real := e2eSecret("apikey")
	e.mustRun(real, "secret", "set", "api-key")
	e.mustRun("", "grant", "add", "api-key", "--repo", "group/app", "--deliver", "proxy", "--host", "api.allowed.test",
		"--header", "Authorization: Bearer {{value}}", "--var", "API_KEY")

	res := e.run("", "exec", "--image", e2eImage(t), "--repo", "group/app", "--ref", "main", e2eJob("proxy.yml"))
	if res.Code != 0 {
		t.Fatalf("exec of the proxy job: want exit 0; %s", res)
	}
	out := res.Output()
	for _, want := range []string{"e2ehttp status=200 fakenet host=allowed", "e2e-bound-ok", "e2ehttp status=403", "e2e-unbound-refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("proxy job output lacks %q:\n%s", want, out)
		}
	}
	m := e2eSurrogateRE.FindStringSubmatch(res.Stdout)
	if m == nil {
		t.Fatalf("proxy job printed no surrogate hash:\n%s", out)
	}
	if m[1] == e2eHash(real) {
		t.Errorf("the job's $API_KEY hashes like the real value (%s): it got the real credential, not a surrogate", m[1])
	}

	var bound, unbound int
	for _, r := range fi.Requests() {
		switch {
		case strings.HasPrefix(r.URL, "/bound"):
			bound++
			if r.Host != "allowed" || !r.TLS {
				t.Errorf("request to /bound reached %s (tls %t), want allowed over TLS", r.Host, r.TLS)
			}
			if got := r.Header.Get("Authorization"); got != "Bearer "+real {
				t.Errorf("upstream saw Authorization with hash %s, want the real value's (%s)", e2eHash(strings.TrimPrefix(got, "Bearer ")), e2eHash(real))
			}
		case strings.HasPrefix(r.URL, "/unbound"):
			unbound++
		}
	}
	if bound != 1 || unbound != 0 {
		t.Errorf("fake internet saw %d requests to /bound and %d to /unbound, want 1 and 0", bound, unbound)
	}

	trail := e.trail(e2eJobID(t, res.Stdout))
	e.mustRun("", "audit", "verify", trail)
	recs := e.records(trail)
	if _, ok := e2eFind(recs, audit.Alert, func(r audit.Record) bool {
		return strings.Contains(r.String(audit.FieldMessage), "not bound") && r.String(audit.FieldHost) == "www.wild.test"
	}); !ok {
		t.Errorf("trail has no alert for the surrogate presented to www.wild.test:\n%s", e2eJSON(recs))
	}
	if r, ok := e2eFind(recs, audit.ProxiedRequest, func(r audit.Record) bool { return r.String(audit.FieldHost) == "api.allowed.test" }); !ok {
		t.Errorf("trail has no proxied_request to api.allowed.test: %v", e2eTypes(recs))
	} else if got := r.String(audit.FieldSecret); got != "api-key" {
		// suggest-policy reads the secret's name from this field.
		t.Errorf("proxied_request to api.allowed.test names secret %q, want %q", got, "api-key")
	}
	e.assertNoLeak([]string{real}, nil)
}

// e2eVaultCase is one way a job holding a Vault token ends.
type e2eVaultCase struct {
	name     string
	job      string
	args     []string
	wantCode int
	stop     func(p *e2eProc) // nil: let the job end by itself
}

var e2eTokenHashRE = regexp.MustCompile(`e2e-token-hash=([0-9a-f]{16})`)

func TestE2EVaultRevocation(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	fv := fakevault.New(t)
	e := newE2E(t, e2eOptions{})
	e.mustRun(fv.RootToken, "secret", "set", "vault-ci", "--backend", "vault", "--vault-addr", fv.URL, "--vault-mode", "token")
	e.mustRun("", "grant", "add", "vault-ci", "--repo", "group/app", "--deliver", "env", "--var", "VAULT_TOKEN", "--scope", "policies=ci")

	// tokenOf returns the child token whose hash the job printed.
	tokenOf := func(t *testing.T, out string) fakevault.Token {
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
		t.Fatalf("the job's $VAULT_TOKEN (hash %s) is none of the fake's %d child tokens", m[1], len(fv.ChildTokens()))
		return fakevault.Token{}
	}
	cancel := func(p *e2eProc) {
		if !p.waitOutput("e2e-long-started", 90*time.Second) {
			t.Fatalf("long job did not start:\n%s%s", p.stdout.String(), p.stderr.String())
		}
		p.signal(syscall.SIGINT)
	}
	tests := []e2eVaultCase{
		{name: "success", job: "vault-ok.yml", wantCode: 0},
		{name: "failure", job: "vault-fail.yml", wantCode: 3},
		{name: "timeout", job: "vault-long.yml", args: []string{"--timeout", "4s"}, wantCode: exitTimeout},
		{name: "cancel", job: "vault-long.yml", wantCode: exitCanceled, stop: cancel},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"exec", "--repo", "group/app", "--ref", "main"}, tc.args...)
			p := e.start(append(args, e2eJob(tc.job))...)
			if tc.stop != nil {
				tc.stop(p)
			}
			res := p.wait(2 * time.Minute)
			if res.Code != tc.wantCode {
				t.Errorf("exec %s: exit %d, want %d; %s", tc.job, res.Code, tc.wantCode, res)
			}
			tok := tokenOf(t, res.Stdout)
			if !tok.Revoked {
				t.Errorf("job %s ended (%s) but its Vault token (accessor %s) is not revoked", e2eJobID(t, res.Stdout), tc.name, tok.Accessor)
			}
			if live := fv.LiveChildTokens(); len(live) > 0 {
				t.Errorf("%d child tokens still live after the job ended: %s", len(live), e2eJSON(live))
			}
			recs := e.records(e.trail(e2eJobID(t, res.Stdout)))
			if _, ok := e2eFind(recs, audit.CredentialRevoked, nil); !ok {
				t.Errorf("trail has no credential_revoked record: %v", e2eTypes(recs))
			}
		})
	}

	t.Run("sigkill", func(t *testing.T) {
		p := e.start("exec", "--repo", "group/app", "--ref", "main", e2eJob("vault-long.yml"))
		if !p.waitOutput("e2e-long-started", 90*time.Second) {
			t.Fatalf("long job did not start:\n%s%s", p.stdout.String(), p.stderr.String())
		}
		jobID := e2eJobID(t, p.stdout.String())
		p.signal(syscall.SIGKILL)
		res := p.wait(30 * time.Second)
		tok := tokenOf(t, res.Stdout)
		if tok.Revoked {
			t.Fatalf("token revoked although airlock was SIGKILLed: the test proves nothing")
		}
		if len(e.containers()) == 0 {
			t.Errorf("no container left after SIGKILL: the test of recovery proves nothing")
		}
		if b, err := os.ReadFile(filepath.Join(e.dir, "netpool.json")); err != nil || !strings.Contains(string(b), jobID) {
			t.Errorf("the killed job's network is not in the pool file (%v): the check that recovery frees it proves nothing:\n%s", err, b)
		}

		// The next exec recovers first.
		next := e.run("", "exec", "--repo", "group/app", "--ref", "main", e2eJob("plain.yml"))
		if next.Code != 0 {
			t.Fatalf("exec after the crash: %s", next)
		}
		for _, tk := range fv.ChildTokens() {
			if tk.Accessor == tok.Accessor && !tk.Revoked {
				t.Errorf("the killed job's token (accessor %s) is not revoked after the next exec", tok.Accessor)
			}
		}
		if ids := e.containers(); len(ids) > 0 {
			t.Errorf("containers of the runner left after recovery: %v", ids)
		}
		trail := e.trail(jobID)
		recs := e.records(trail)
		n := len(recs)
		if n < 2 || recs[n-1].Type != audit.Seal || recs[n-2].Type != audit.RunnerCrashed {
			t.Errorf("trail of the killed job does not end with runner_crashed and seal: %v", e2eTypes(recs))
		}
		if v := e.run("", "audit", "verify", trail); v.Code != 0 || !strings.Contains(v.Stdout, "ok") {
			t.Errorf("audit verify of the recovered trail: %s", v)
		}
	})

	secrets := []string{fv.RootToken}
	for _, tk := range fv.ChildTokens() {
		secrets = append(secrets, tk.ID)
	}
	e.assertNoLeak(secrets, nil)
}

// TestE2ENoSecretAnywhere runs a job with a credential of every delivery,
// which even tries to print them, and looks for the values everywhere:
// output, debug logs, docker inspect of the running container, state.db
// and every file under the state and runtime directories.
func TestE2ENoSecretAnywhere(t *testing.T) {
	for _, executor := range []string{"docker", "containerd"} {
		t.Run(executor, func(t *testing.T) { testE2ENoSecretAnywhere(t, executor) })
	}
}

func testE2ENoSecretAnywhere(t *testing.T, executor string) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	fi := testenv.NewFakeInternet(t)
	e := newE2E(t, e2eOptions{Hosts: e2eFakeHosts(), UpstreamCA: fi.CA.WriteFile(t), Ceiling: []string{"api.allowed.test:443", "*.wild.test:80"},
		Executor: executor})
	envValue, fileValue, proxyValue := e2eSecret("leakenv"), e2eSecret("leakfile"), e2eSecret("leakproxy")
	t.Setenv("E2E_LEAK_VALUE", envValue)
	e.mustRun("", "secret", "set", "deploy-token", "--from-env", "E2E_LEAK_VALUE")
	e.mustRun(fileValue, "secret", "set", "deploy-file")
	e.mustRun(proxyValue, "secret", "set", "api-key")
	e.mustRun("", "grant", "add", "deploy-token", "--repo", "group/app", "--deliver", "env", "--var", "DEPLOY_TOKEN")
	e.mustRun("", "grant", "add", "deploy-file", "--repo", "group/app", "--deliver", "file", "--var", "DEPLOY_FILE")
	e.mustRun("", "grant", "add", "api-key", "--repo", "group/app", "--deliver", "proxy", "--host", "api.allowed.test", "--var", "API_KEY")

	image := e2eImage(t)
	p := e.start("exec", "--image", image, "--repo", "group/app", "--ref", "main", e2eJob("leak.yml"))
	if !p.waitOutput("e2e-leak-waiting", 90*time.Second) {
		t.Fatalf("leak job did not start:\n%s%s", p.stdout.String(), p.stderr.String())
	}
	inspect := e.dockerInspect()
	if inspect == "" {
		t.Errorf("no container to inspect while the job runs")
	}
	res := p.wait(2 * time.Minute)
	if res.Code != 0 {
		t.Fatalf("exec of the leak job: %s", res)
	}
	if !strings.Contains(res.Stdout, "[MASKED]") {
		t.Errorf("the job printed its credentials but the output shows no [MASKED]:\n%s", res.Stdout)
	}
	// A refused job's error message names the secret, never its value.
	if r := e.run("", "exec", "--image", image, "--repo", "other/app", "--ref", "main", e2eJob("leak.yml")); r.Code != exitRefused {
		t.Errorf("exec for an ungranted repo: exit %d, want %d; %s", r.Code, exitRefused, r)
	}
	var upstream bytes.Buffer
	for _, r := range fi.Requests() {
		upstream.WriteString(r.Header.Get("Authorization"))
	}
	if !strings.Contains(upstream.String(), proxyValue) {
		t.Errorf("the bound upstream never received the proxy credential; requests: %s", e2eJSON(fi.Requests()))
	}
	e.assertNoLeak([]string{envValue, fileValue, proxyValue}, map[string]string{executor + " inspect of the job container": inspect})
}

func TestE2EAuditTrail(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	testenv.NewFakeInternet(t)
	col := newE2ECollector(t)
	e := newE2E(t, e2eOptions{Hosts: e2eFakeHosts(), Ceiling: []string{"*.wild.test:80"}, AuditURL: col.URL(), AuditTokenSecret: "audit-collector-token"})
	collectorToken, cred := e2eSecret("collector"), e2eSecret("auditcred")
	e.mustRun(collectorToken, "secret", "set", "audit-collector-token")
	e.mustRun(cred, "secret", "set", "audit-cred")
	e.mustRun("", "grant", "add", "audit-cred", "--repo", "group/app", "--deliver", "env", "--var", "AUDIT_CRED")

	p := e.start("exec", "--repo", "group/app", "--ref", "main", e2eJob("audit.yml"))
	if !p.waitOutput("Running job", 60*time.Second) {
		t.Fatalf("exec did not start the job:\n%s%s", p.stdout.String(), p.stderr.String())
	}
	jobID := e2eJobID(t, p.stdout.String())
	live := false
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline) && !p.exited(); time.Sleep(50 * time.Millisecond) {
		if _, ok := e2eFind(col.records(jobID), audit.StepStarted, nil); ok {
			live = !p.exited()
			break
		}
	}
	if !live {
		t.Errorf("the collector saw no step_started record while the job ran (it saw %v)", e2eTypes(col.records(jobID)))
	}
	res := p.wait(2 * time.Minute)
	if res.Code != 0 {
		t.Fatalf("exec of the audit job: %s", res)
	}
	trail := e.trail(jobID)
	if !strings.Contains(res.Stdout, "Audit trail: "+trail) {
		t.Errorf("exec summary does not name the trail %s:\n%s", trail, res.Stdout)
	}

	t.Run("verify and show", func(t *testing.T) {
		v := e.run("", "audit", "verify", trail)
		if v.Code != 0 || !strings.Contains(v.Stdout, "ok: job "+jobID) {
			t.Errorf("audit verify: %s", v)
		}
		show := e.mustRun("", "audit", "show", trail).Stdout
		for _, typ := range []audit.EventType{audit.JobAccepted, audit.GrantDecision, audit.CredentialMinted, audit.CredentialRevoked,
			audit.StepStarted, audit.StepFinished, audit.JobFinished, audit.Seal} {
			if !strings.Contains(show, string(typ)) {
				t.Errorf("audit show lacks a %s record:\n%s", typ, show)
			}
		}
		if !strings.Contains(show, string(audit.EgressAllowed)) && !strings.Contains(show, string(audit.DNSAnswered)) {
			t.Errorf("audit show has neither egress_allowed nor dns_answered:\n%s", show)
		}
		if !strings.Contains(show, string(audit.EgressDenied)) && !strings.Contains(show, string(audit.DNSRefused)) {
			t.Errorf("audit show has neither egress_denied nor dns_refused:\n%s", show)
		}
		if !strings.Contains(show, "evil.test") || !strings.Contains(show, "www.wild.test") {
			t.Errorf("audit show names neither the allowed nor the denied host:\n%s", show)
		}
	})

	t.Run("collector", func(t *testing.T) {
		file := e.records(trail)
		got := map[int64]audit.EventType{}
		for _, r := range col.records(jobID) {
			got[r.Seq] = r.Type
		}
		for _, r := range file {
			if got[r.Seq] != r.Type {
				t.Errorf("collector has %q at seq %d, the trail %q", got[r.Seq], r.Seq, r.Type)
			}
		}
		auth := col.authHeaders()
		if len(auth) == 0 {
			t.Fatal("collector received no post")
		}
		for _, a := range auth {
			if a != "Bearer "+collectorToken {
				t.Errorf("collector got Authorization with hash %s, want the token's (%s)", e2eHash(a), e2eHash("Bearer "+collectorToken))
			}
		}
	})

	t.Run("suggest-policy", func(t *testing.T) {
		out := e.mustRun("", "audit", "suggest-policy", trail).Stdout
		if !regexp.MustCompile(`airlock policy set .*evil\.test`).MatchString(out) {
			t.Errorf("suggest-policy prints no policy set line with evil.test:\n%s", out)
		}
	})

	t.Run("tampered", func(t *testing.T) {
		b, err := os.ReadFile(trail)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.SplitAfter(b, []byte("\n"))
		// Change one byte of record 1's repository.
		i := bytes.Index(lines[0], []byte(`"repo":"group/app"`))
		if i < 0 {
			t.Fatalf("record 1 has no repo field: %s", lines[0])
		}
		lines[0][i+len(`"repo":"group/ap`)] = 'q'
		bad := filepath.Join(t.TempDir(), "tampered.jsonl")
		if err := os.WriteFile(bad, bytes.Join(lines, nil), 0o600); err != nil {
			t.Fatal(err)
		}
		v := e.run("", "audit", "verify", bad)
		if v.Code == 0 || !strings.Contains(v.Output(), "seq 1") {
			t.Errorf("audit verify of a tampered trail: want a failure naming seq 1; %s", v)
		}
	})

	t.Run("collector down for a whole job", func(t *testing.T) {
		col.status.Store(503)
		first := e.run("", "exec", "--repo", "group/app", "--ref", "main", e2eJob("plain.yml"))
		if first.Code != 0 {
			t.Fatalf("exec while the collector is down: %s", first)
		}
		down := e2eJobID(t, first.Stdout)
		if n := len(col.records(down)); n > 0 || col.refusedPosts() == 0 {
			t.Fatalf("collector down: accepted %d records of job %s and refused %d posts, want 0 and some", n, down, col.refusedPosts())
		}
		col.status.Store(200)
		// The next exec's shipper delivers the leftover spool.
		if r := e.run("", "exec", "--repo", "group/app", "--ref", "main", e2eJob("plain.yml")); r.Code != 0 {
			t.Fatalf("exec after the collector is back: %s", r)
		}
		file := e.records(e.trail(down))
		got := map[int64]bool{}
		for _, r := range col.records(down) {
			got[r.Seq] = true
		}
		for _, r := range file {
			if !got[r.Seq] {
				t.Errorf("collector never received seq %d (%s) of job %s", r.Seq, r.Type, down)
			}
		}
	})

	e.assertNoLeak([]string{collectorToken, cred}, map[string]string{"records the collector received": e2eJSON(col.records(""))})
}

// TestE2EAuditKeysSurviveMasking: the trail masks every credential value
// in its records; a credential whose value starts like a record's field
// name must not cost the record that field.
func TestE2EAuditKeysSurviveMasking(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	e := newE2E(t, e2eOptions{})
	value := "secret" + e2eSecret("prefixed")
	e.mustRun(value, "secret", "set", "deploy-token")
	e.mustRun("", "grant", "add", "deploy-token", "--repo", "group/app", "--deliver", "env", "--var", "DEPLOY_TOKEN")
	res := e.run("", "exec", "--repo", "group/app", "--ref", "main", "-e", "WANT="+e2eHash(value), e2eJob("granted-env.yml"))
	if res.Code != 0 {
		t.Fatalf("exec: %s", res)
	}
	recs := e.records(e.trail(e2eJobID(t, res.Stdout)))
	for _, typ := range []audit.EventType{audit.CredentialMinted, audit.CredentialRevoked} {
		r, ok := e2eFind(recs, typ, nil)
		if !ok {
			t.Errorf("trail has no %s record", typ)
			continue
		}
		if got := r.String(audit.FieldSecret); got != "deploy-token" {
			t.Errorf("%s record: secret = %q, want %q; fields %v", typ, got, "deploy-token", r.Fields)
		}
	}
	e.assertNoLeak([]string{value}, nil)
}

// TestE2EExecService: `airlock exec` of a job file with services: starts
// the service in the job's namespace, where the job reaches it by its
// alias, and removes it with the job.
func TestE2EExecService(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	e := newE2E(t, e2eOptions{})
	res := e.run("", "exec", e2eJob("service.yml"))
	if res.Code != 0 || !strings.Contains(res.Stdout, "service said: ok connected pong from-the-service") {
		t.Fatalf("exec of a job with a service: %s", res)
	}
}
