package main

// End-to-end tests of audit completeness and masking of what a job
// chooses (issue 9, defects 4 and 5), through the real binary.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// TestE2EHostNamesAreMasked: a job resolves and requests
// $SECRET.example.test, as given and upper-cased; the value (in any case)
// is in no output, log line or file, and the denials are still recorded.
func TestE2EHostNamesAreMasked(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	e := newE2E(t, e2eOptions{Hosts: e2eFakeHosts()})
	raw := e2eSecret("host")
	value := "E2eHost" + strings.ToUpper(raw[9:17]) + raw[17:]
	e.mustRun(value, "secret", "set", "host-secret")
	e.mustRun("", "grant", "add", "host-secret", "--repo", "group/app", "--deliver", "env", "--var", "HOST_SECRET")
	res := e.run("", "exec", "--repo", "group/app", "--ref", "main", e2eJob("hostleak.yml"))
	if res.Code != 0 || !strings.Contains(res.Stdout, "e2e-hostleak-done") {
		t.Fatalf("exec: want exit 0 and e2e-hostleak-done; %s", res)
	}
	if !strings.Contains(res.Stdout, "denied [MASKED].example.test") {
		t.Errorf("the exec summary does not list the masked denial:\n%s", res.Stdout)
	}
	if !strings.Contains(res.Stderr, "egress denied") {
		t.Errorf("the debug log has no egress denial; the test shows nothing:\n%s", res.Stderr)
	}
	recs := e.records(e.trail(e2eJobID(t, res.Stdout)))
	n := 0
	for _, r := range recs {
		if (r.Type == audit.DNSRefused || r.Type == audit.EgressDenied) && strings.Contains(r.String(audit.FieldHost), "[MASKED]") {
			n++
		}
	}
	if n < 4 {
		t.Errorf("trail has %d masked denials, want at least 4 (2 DNS names, http, CONNECT): %v", n, e2eTypes(recs))
	}
	e.assertNoLeak([]string{value, strings.ToLower(value), strings.ToUpper(value)}, nil)
}

// TestE2ETwoExecsShareStateDir: two `airlock exec` at once on one state
// directory, both with busy trails; every trail verifies.
func TestE2ETwoExecsShareStateDir(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	e := newE2E(t, e2eOptions{})
	e.mustRun("", "exec", e2eJob("plain.yml")) // creates the state directory and keys once
	procs := []*e2eProc{
		e.start("exec", "--repo", "group/a", e2eJob("busy.yml")),
		e.start("exec", "--repo", "group/b", e2eJob("busy.yml")),
	}
	for i, p := range procs {
		res := p.wait(3 * time.Minute)
		if res.Code != 0 || !strings.Contains(res.Stdout, "e2e-busy-done") {
			t.Fatalf("exec %d: want exit 0 and e2e-busy-done; %s", i, res)
		}
		path := e.trail(e2eJobID(t, res.Stdout))
		v := e.run("", "audit", "verify", path)
		if v.Code != 0 {
			t.Errorf("audit verify of exec %d's trail: %s", i, v)
		}
		recs := e.records(path)
		dns := 0
		for _, r := range recs {
			if r.Type == audit.DNSRefused {
				dns++
			}
		}
		if dns < 150 {
			t.Errorf("exec %d's trail has %d refused DNS questions, want at least 150", i, dns)
		}
	}
}

// e2eGitRepo makes a repository with a base commit and returns its
// directory, the base sha and a function that commits a file and returns
// the new head.
func e2eGitRepo(t *testing.T) (string, string, func(file, content string) string) {
	t.Helper()
	dir := t.TempDir()
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.test",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.test", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	commit := func(file, content string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		git("add", file)
		git("commit", "-q", "-m", "add "+file)
		return git("rev-parse", "HEAD")
	}
	git("init", "-q", "-b", "main")
	return dir, commit("README", "hello\n"), commit
}

// TestE2ELeakScan: a change adding an AWS-style key and one adding a
// stored secret's value are blocked before any container exists under
// block and warned about under warn; the stored value appears nowhere; a
// clean change passes.
func TestE2ELeakScan(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	e := newE2E(t, e2eOptions{})
	stored := e2eSecret("leak")
	e.mustRun(stored, "secret", "set", "deploy-token")
	const awsKey = "AKIAZ7QK3MVX2LPRT4WN"
	dir, base, commit := e2eGitRepo(t)
	awsHead := commit("aws.env", "# deploy\naws_access_key_id = "+awsKey+"\n")
	storedHead := commit("notes.txt", "token "+stored+"\n")
	cleanBase := storedHead
	cleanHead := commit("main.go", "package main\n")
	exec := func(change string) e2eResult {
		return e.run("", "exec", "--repo", "group/app", "--ref", "main", "--git-dir", dir, "--change", change, e2eJob("plain.yml"))
	}

	e.mustRun("", "policy", "set", "--repo", "group/app", "--leak-scan", "block")
	for _, tc := range []struct{ name, change, want string }{
		{"aws key", base + ".." + awsHead, "aws.env:2"},
		{"stored secret", awsHead + ".." + storedHead, `stored secret "deploy-token"`},
	} {
		res := exec(tc.change)
		if res.Code != exitRefused {
			t.Fatalf("block, %s: exit %d, want %d; %s", tc.name, res.Code, exitRefused, res)
		}
		for _, w := range []string{tc.want, "leak scan", "Job refused before running"} {
			if !strings.Contains(res.Output(), w) {
				t.Errorf("block, %s: output lacks %q:\n%s", tc.name, w, res.Output())
			}
		}
		if strings.Contains(res.Output(), "e2e-plain") || strings.Contains(res.Output(), "Preparing a hardened container") || strings.Contains(res.Stderr, "container created") {
			t.Errorf("block, %s: a container was made or the job ran:\n%s", tc.name, res.Output())
		}
		recs := e.records(e.trail(e2eJobID(t, res.Stdout)))
		if r, ok := e2eFind(recs, audit.LeakFound, nil); !ok || r.String(audit.FieldMode) != "block" {
			t.Errorf("block, %s: no leak_found record with mode block: %v", tc.name, e2eTypes(recs))
		}
	}
	if res := exec(base + ".." + storedHead); !strings.Contains(res.Output(), "rotate it") {
		t.Errorf("a stored secret's finding does not say to rotate it:\n%s", res.Output())
	}

	e.mustRun("", "policy", "set", "--repo", "group/app", "--leak-scan", "warn")
	res := exec(base + ".." + storedHead)
	if res.Code != 0 || !strings.Contains(res.Stdout, "e2e-plain") || !strings.Contains(res.Stdout, "Warning: leak scan found 2") {
		t.Errorf("warn: want the job to run with a warning naming 2 findings; %s", res)
	}
	recs := e.records(e.trail(e2eJobID(t, res.Stdout)))
	n := 0
	for _, r := range recs {
		if r.Type == audit.LeakFound && r.String(audit.FieldMode) == "warn" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("warn: %d leak_found records, want 2: %v", n, e2eTypes(recs))
	}

	res = exec(cleanBase + ".." + cleanHead)
	if res.Code != 0 || !strings.Contains(res.Stdout, "Leak scan: no credentials") {
		t.Errorf("clean change: %s", res)
	}
	e.assertNoLeak([]string{stored, awsKey}, nil)
}

// TestE2EMTLS: a job that holds no certificate reaches an upstream of the
// fake internet that requires a client certificate, through the proxy and
// transparently; its environment and files hold no key material; the
// trail records the certificate's fingerprint; the key is in no output.
func TestE2EMTLS(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	fi := testenv.NewFakeInternet(t)
	hosts := e2eFakeHosts()
	hosts["mtls.test"] = testenv.MTLSAddr.String()
	e := newE2E(t, e2eOptions{Hosts: hosts, UpstreamCA: fi.CA.WriteFile(t)})
	certPEM, keyPEM, err := fi.CA.ClientCertPEM("airlock-e2e-client")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// A key that does not match is refused.
	_, otherKey, _ := fi.CA.ClientCertPEM("other")
	otherFile := filepath.Join(dir, "other.key")
	if err := os.WriteFile(otherFile, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := e.run("", "secret", "set", "bad-cert", "--cert", certFile, "--key", otherFile); r.Code == 0 || !strings.Contains(r.Output(), "key must match") {
		t.Errorf("secret set with a key that does not match: %s", r)
	}
	e.mustRun("", "secret", "set", "client-cert", "--cert", certFile, "--key", keyFile)
	e.mustRun("", "grant", "add", "client-cert", "--repo", "group/app", "--deliver", "mtls", "--host", "mtls.test")

	res := e.run("", "exec", "--image", e2eImage(t), "--repo", "group/app", "--ref", "main", e2eJob("mtls.yml"))
	if res.Code != 0 || !strings.Contains(res.Stdout, "e2e-mtls-ok") || strings.Count(res.Stdout, "e2ehttp status=200 fakenet host=mtls") != 2 {
		t.Fatalf("exec of the mtls job: want exit 0, two 200s from mtls and e2e-mtls-ok; %s", res)
	}
	seen := map[string]string{}
	for _, r := range fi.Requests() {
		if r.Host == "mtls" {
			seen[r.URL] = r.ClientCert
		}
	}
	if seen["/proxied"] != "airlock-e2e-client" || seen["/transparent"] != "airlock-e2e-client" {
		t.Errorf("the mTLS upstream saw client certificates %v, want airlock-e2e-client on both paths", seen)
	}
	trail := e.trail(e2eJobID(t, res.Stdout))
	e.mustRun("", "audit", "verify", trail)
	n := 0
	for _, r := range e.records(trail) {
		if r.Type == audit.ProxiedRequest && r.String(audit.FieldHost) == "mtls.test" &&
			strings.HasPrefix(r.String(audit.FieldClientCert), "sha256:") && r.String(audit.FieldCertSecret) == "client-cert" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("trail has %d proxied_request records to mtls.test with the certificate's fingerprint, want 2", n)
	}
	keyLines := strings.Split(strings.TrimSpace(string(keyPEM)), "\n")
	e.assertNoLeak([]string{keyLines[1]}, map[string]string{"docker inspect": e.dockerInspect()})
}

// TestE2EExecIdentityFromCheckout: without --repo and --ref, airlock exec
// takes the job's identity from the git checkout it runs in (read while
// the runner opens); the flags win over it.
func TestE2EExecIdentityFromCheckout(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	e := newE2E(t, e2eOptions{})
	dir, head, _ := e2eGitRepo(t)
	if out, err := exec.Command("git", "-C", dir, "remote", "add", "origin", "https://gitlab.example.test/acme/widgets.git").CombinedOutput(); err != nil {
		t.Fatalf("git remote add: %v: %s", err, out)
	}
	jobFile := filepath.Join(t.TempDir(), "id.yml")
	if err := os.WriteFile(jobFile, []byte("image: airlock-test:busybox\nscript:\n  - echo \"id=$CI_PROJECT_PATH@$CI_COMMIT_REF_NAME@$CI_COMMIT_SHA\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := e.command(ctx, append([]string{"exec", "--pull-policy", "never"}, append(args, jobFile)...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("airlock exec %v in the checkout: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out, want := run(), "id=acme/widgets@main@"+head+"\n"; !strings.Contains(out, want) {
		t.Errorf("identity from the checkout: want %q in\n%s", want, out)
	}
	if out, want := run("--repo", "other/app", "--ref", "release"), "id=other/app@release@"+head+"\n"; !strings.Contains(out, want) {
		t.Errorf("identity with --repo and --ref: want %q in\n%s", want, out)
	}
}
