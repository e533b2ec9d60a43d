package runner

import (
	"archive/zip"
	"bytes"
	"compress/gzip"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
	"github.com/airlock-ci/airlock/runner/cache"
	"github.com/airlock-ci/airlock/runner/gitlab"
)

// zipEntries maps the names of a zip to their content and mode.
func zipEntries(t *testing.T, data []byte) (map[string]string, map[string]fs.FileMode) {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("artifact is not a zip: %v", err)
	}
	content, modes := map[string]string{}, map[string]fs.FileMode{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		content[f.Name], modes[f.Name] = string(b), f.Mode()
	}
	return content, modes
}

func artifactOf(arts []fakegitlab.Artifact, typ string) *fakegitlab.Artifact {
	for i := range arts {
		if arts[i].Type == typ {
			return &arts[i]
		}
	}
	return nil
}

const buildScript = `mkdir -p out/tmp reports && echo hello > out/a.txt && printf '#!/bin/sh\necho ran-the-tool\n' > out/run.sh && chmod 755 out/run.sh && ln -s /etc/shadow out/x && ln -s a.txt out/link && echo junk > out/tmp/junk && echo '<testsuite name="t"/>' > reports/junit.xml`

// A build -> test pipeline: the build's archive keeps content, exec bit
// and symlinks (the /etc/shadow link archived as a link), honours exclude,
// carries the audit trail under .airlock/ and leaves the archive slot to
// the job; its junit report goes up as gzip; the test job gets the archive
// through a redirect to object storage, which never sees the job token.
func TestAgentPipelineBuildThenTest(t *testing.T) {
	e := newAgentEnv(t)
	e.gl.SetObjectStorage(true)
	build := gitlabSpec([]string{buildScript}, nil)
	build.Name = "build"
	build.Artifacts = []fakegitlab.ArtifactSpec{
		{Paths: []string{"out"}, Exclude: []string{"out/tmp/**"}, ExpireIn: "1 week", Type: "archive", Format: "zip"},
		{Name: "junit.xml", Paths: []string{"reports/junit.xml"}, When: "always", Type: "junit", Format: "gzip"},
	}
	_, stop := startAgent(t, e.config(1), &trailRunner{inner: e.rec, dir: t.TempDir()})
	defer stop()
	bid := e.gl.Enqueue(build)
	if st := waitJob(t, e.gl, bid, 2*time.Minute); st.Status != "success" {
		t.Fatalf("build ended %s/%s, want success\n%s", st.Status, st.FailureReason, e.gl.Trace(bid))
	}
	arts := e.gl.Artifacts(bid)
	if len(arts) != 2 {
		t.Fatalf("build uploaded %d artifacts, want the archive and the junit report\n%s", len(arts), e.gl.Trace(bid))
	}
	a := artifactOf(arts, "archive")
	if a == nil || a.Name != "artifacts.zip" || a.Format != "zip" || a.ExpireIn != "1 week" {
		t.Fatalf("archive artifact = %+v, want artifacts.zip (zip, 1 week)", a)
	}
	content, modes := zipEntries(t, a.Data)
	if content["out/a.txt"] != "hello\n" {
		t.Errorf("out/a.txt = %q, want hello", content["out/a.txt"])
	}
	if modes["out/run.sh"].Perm() != 0o755 {
		t.Errorf("out/run.sh mode %v, want 0755", modes["out/run.sh"])
	}
	if modes["out/x"]&fs.ModeSymlink == 0 || content["out/x"] != "/etc/shadow" {
		t.Errorf("out/x = %q mode %v, want a symlink to /etc/shadow, never the file", content["out/x"], modes["out/x"])
	}
	if modes["out/link"]&fs.ModeSymlink == 0 || content["out/link"] != "a.txt" {
		t.Errorf("out/link = %q mode %v, want a symlink to a.txt", content["out/link"], modes["out/link"])
	}
	if _, ok := content["out/tmp/junk"]; ok {
		t.Errorf("archive holds out/tmp/junk, which exclude out/tmp/** drops")
	}
	if !strings.Contains(content[gitlab.AuditEntry], `"job_finished"`) {
		t.Errorf("archive lacks the audit trail at %s: %v", gitlab.AuditEntry, keys(content))
	}
	j := artifactOf(arts, "junit")
	if j == nil || j.Name != "junit.xml.gz" || j.Format != "gzip" {
		t.Fatalf("junit artifact = %+v, want junit.xml.gz (gzip)", j)
	}
	zr, err := gzip.NewReader(bytes.NewReader(j.Data))
	if err != nil {
		t.Fatalf("junit report is not gzip: %v", err)
	}
	b, _ := io.ReadAll(zr)
	if zr.Name != "junit.xml" || zr.Comment != "reports/junit.xml" || !strings.Contains(string(b), "testsuite") {
		t.Errorf("junit member %q (%q) = %q", zr.Name, zr.Comment, b)
	}

	test := gitlabSpec([]string{"test -x out/run.sh && out/run.sh", "test -L out/x && readlink out/x", "cat out/link", "test ! -e out/tmp"}, nil)
	test.Name = "test"
	test.Dependencies = []fakegitlab.DependencySpec{{ID: bid, Name: "build"}}
	tid := e.gl.Enqueue(test)
	st := waitJob(t, e.gl, tid, 2*time.Minute)
	trace := string(e.gl.Trace(tid))
	if st.Status != "success" {
		t.Fatalf("test ended %s/%s, want success\n%s", st.Status, st.FailureReason, trace)
	}
	for _, w := range []string{"ran-the-tool\n", "/etc/shadow\n", "hello\n"} {
		if !strings.Contains(trace, w) {
			t.Errorf("test trace lacks %q:\n%s", w, trace)
		}
	}
	objs := e.gl.ObjectStorageRequests()
	if len(objs) != 1 {
		t.Fatalf("object storage got %d requests, want the redirected download", len(objs))
	}
	if tok := objs[0].Header.Get("JOB-TOKEN"); tok != "" {
		t.Errorf("object storage received a JOB-TOKEN header")
	}
	for _, r := range e.gl.RequestsTo("GET", fmt.Sprintf("/api/v4/jobs/%d/artifacts", bid)) {
		if r.Header.Get("JOB-TOKEN") != e.gl.Job(tid).Token {
			t.Errorf("GitLab's download request carried no job token or another one")
		}
	}
	// The test job uploads no archive: only its trail, alone.
	tarts := e.gl.Artifacts(tid)
	if len(tarts) != 1 || tarts[0].Name != gitlab.AuditArtifact {
		t.Errorf("test job uploaded %+v, want only %s", tarts, gitlab.AuditArtifact)
	}
}

func TestAgentArtifactsWhen(t *testing.T) {
	e := newAgentEnv(t)
	_, stop := startAgent(t, e.config(2), e.rec)
	defer stop()
	spec := func(script string) fakegitlab.JobSpec {
		s := gitlabSpec([]string{"echo log > debug.log && echo '<testsuite/>' > junit.xml", script}, nil)
		s.Artifacts = []fakegitlab.ArtifactSpec{{Name: "debug", Paths: []string{"debug.log"}, When: "on_failure", Type: "archive", Format: "zip"},
			{Name: "junit.xml", Paths: []string{"junit.xml"}, When: "always", Type: "junit", Format: "gzip"}}
		return s
	}
	failing := e.gl.Enqueue(spec("exit 3"))
	passing := e.gl.Enqueue(spec("true"))
	if st := waitJob(t, e.gl, failing, 2*time.Minute); st.Status != "failed" || st.FailureReason != "script_failure" {
		t.Errorf("failing job ended %s/%s, want failed/script_failure", st.Status, st.FailureReason)
	}
	if arts := e.gl.Artifacts(failing); len(arts) != 2 || artifactOf(arts, "archive").Name != "debug.zip" || artifactOf(arts, "junit") == nil {
		t.Errorf("failing job uploaded %+v, want debug.zip and its junit report", arts)
	}
	if st := waitJob(t, e.gl, passing, 2*time.Minute); st.Status != "success" {
		t.Errorf("passing job ended %s, want success", st.Status)
	}
	if arts := e.gl.Artifacts(passing); len(arts) != 1 || arts[0].Type != "junit" {
		t.Errorf("passing job uploaded %+v, want only its junit report (the archive is when: on_failure)", arts)
	}
}

func TestAgentArtifactUploadFaults(t *testing.T) {
	e := newAgentEnv(t)
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()
	spec := gitlabSpec([]string{"echo data > result.txt"}, nil)
	spec.Artifacts = []fakegitlab.ArtifactSpec{{Paths: []string{"result.txt"}, Type: "archive", Format: "zip"}}

	// A 307 and a 503: the upload gets through and the job succeeds.
	e.gl.RedirectArtifacts(1)
	ok := e.gl.Enqueue(spec)
	e.gl.InjectFault(fakegitlab.Fault{Method: "POST", Path: fmt.Sprintf("/api/v4/jobs/%d/artifacts", ok), Status: 503, Count: 1})
	if st := waitJob(t, e.gl, ok, 2*time.Minute); st.Status != "success" {
		t.Errorf("job after 307+503 ended %s/%s, want success\n%s", st.Status, st.FailureReason, e.gl.Trace(ok))
	}
	if arts := e.gl.Artifacts(ok); len(arts) != 1 {
		t.Errorf("job after 307+503 has %d artifacts, want 1", len(arts))
	}
	if n := e.gl.ArtifactUploads(ok); n != 3 {
		t.Errorf("job after 307+503 made %d upload requests, want 3", n)
	}

	// A 413 is final and fails the otherwise successful job.
	big := e.gl.Enqueue(spec)
	e.gl.InjectFault(fakegitlab.Fault{Method: "POST", Path: fmt.Sprintf("/api/v4/jobs/%d/artifacts", big), Status: 413, Count: 5})
	st := waitJob(t, e.gl, big, 2*time.Minute)
	if st.Status != "failed" || st.FailureReason != "script_failure" {
		t.Errorf("job after 413 ended %s/%s, want failed/script_failure", st.Status, st.FailureReason)
	}
	if n := e.gl.ArtifactUploads(big); n != 1 {
		t.Errorf("job after 413 made %d upload requests, want 1 (413 is final)", n)
	}
	if trace := string(e.gl.Trace(big)); !strings.Contains(trace, "ERROR: Uploading artifacts") {
		t.Errorf("trace lacks the upload error line:\n%s", trace)
	}
}

func TestAgentDependencyUnavailable(t *testing.T) {
	e := newAgentEnv(t)
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()
	dep := e.gl.AddJob("build") // finished, no artifacts: 404
	spec := gitlabSpec([]string{"echo SCRIPT-RAN"}, nil)
	spec.Dependencies = []fakegitlab.DependencySpec{{ID: dep, Name: "build"}}
	id := e.gl.Enqueue(spec)
	st := waitJob(t, e.gl, id, 2*time.Minute)
	trace := string(e.gl.Trace(id))
	if st.Status != "failed" || st.FailureReason != "missing_dependency_failure" {
		t.Errorf("job ended %s/%s, want failed/missing_dependency_failure\n%s", st.Status, st.FailureReason, trace)
	}
	if strings.Contains(trace, "SCRIPT-RAN\n") {
		t.Errorf("the script ran although its dependency could not be downloaded")
	}
	if n := len(e.gl.RequestsTo("GET", fmt.Sprintf("/api/v4/jobs/%d/artifacts", dep))); n != 1 {
		t.Errorf("%d download requests, want 1 (404 is final)", n)
	}
}

func TestAgentCache(t *testing.T) {
	e := newAgentEnv(t)
	store, err := cache.New(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.config(1)
	cfg.Cache = store
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()
	run := func(name string, protected bool, c fakegitlab.CacheSpec, script string) (string, string) {
		t.Helper()
		s := gitlabSpec([]string{script}, nil)
		s.Name, s.Protected = name, protected
		s.Cache = []fakegitlab.CacheSpec{c}
		id := e.gl.Enqueue(s)
		st := waitJob(t, e.gl, id, 2*time.Minute)
		return st.Status, string(e.gl.Trace(id))
	}
	st, trace := run("write", false, fakegitlab.CacheSpec{Key: "deps-$CI_COMMIT_REF_NAME", Paths: []string{"vendor"}, Policy: "push"},
		"mkdir -p vendor && echo cached-lib > vendor/lib")
	if st != "success" || !strings.Contains(trace, "Created cache deps-main") {
		t.Fatalf("writing job ended %s; trace:\n%s", st, trace)
	}
	st, trace = run("read", false, fakegitlab.CacheSpec{Key: "deps-main", Paths: []string{"vendor"}, Policy: "pull"},
		"cat vendor/lib")
	if st != "success" || !strings.Contains(trace, "cached-lib\n") {
		t.Errorf("reading job ended %s, want the cached file; trace:\n%s", st, trace)
	}
	st, trace = run("fallback", false, fakegitlab.CacheSpec{Key: "other", FallbackKeys: []string{"deps-main"}, Paths: []string{"vendor"}, Policy: "pull"},
		"cat vendor/lib")
	if st != "success" || !strings.Contains(trace, "cached-lib\n") || !strings.Contains(trace, "Successfully extracted cache deps-main") {
		t.Errorf("fallback job ended %s, want the cache through its fallback key; trace:\n%s", st, trace)
	}
	// A protected ref never sees what an unprotected one cached.
	st, trace = run("protected", true, fakegitlab.CacheSpec{Key: "deps-main", Paths: []string{"vendor"}, Policy: "pull"},
		"test ! -e vendor/lib && echo no-cache")
	if st != "success" || !strings.Contains(trace, "no-cache\n") {
		t.Errorf("protected job ended %s, want no cache from an unprotected ref; trace:\n%s", st, trace)
	}
	// A cache failure only warns: a missing key does not fail the job.
	st, trace = run("missing", false, fakegitlab.CacheSpec{Key: "nothing", Paths: []string{"vendor"}}, "true")
	if st != "success" || !strings.Contains(trace, "WARNING") {
		t.Errorf("job with a missing cache ended %s, want success with a warning; trace:\n%s", st, trace)
	}
}

// output_limit cuts the log with GitLab's notice; the job runs on and
// keeps its result, and the final checksum covers exactly the kept bytes.
func TestAgentOutputLimit(t *testing.T) {
	e := newAgentEnv(t)
	cfg := e.config(1)
	cfg.Runners[0].OutputLimit = 1 // KiB
	_, stop := startAgent(t, cfg, e.rec)
	defer stop()
	id := e.gl.Enqueue(gitlabSpec([]string{"i=0; while [ $i -lt 200 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done", "echo done > /tmp/x; exit 0"}, nil))
	st := waitJob(t, e.gl, id, 2*time.Minute)
	trace := e.gl.Trace(id)
	if st.Status != "success" {
		t.Errorf("job ended %s/%s, want success (the limit does not stop it)", st.Status, st.FailureReason)
	}
	notice := "\n\x1b[33;1mJob's log exceeded limit of 1024 bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n"
	if len(trace) != 1024+len(notice) || !strings.HasSuffix(string(trace), notice) {
		t.Errorf("trace is %d bytes ending %q, want 1024 kept bytes and the notice", len(trace), trace[max(0, len(trace)-80):])
	}
	if want := fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(trace)); st.Checksum != want || st.Bytesize != int64(len(trace)) {
		t.Errorf("final update checksum %s size %d, want %s size %d", st.Checksum, st.Bytesize, want, len(trace))
	}
	// The runner's own record still has every line.
	if out := e.rec.output(id); !strings.Contains(out, "line-199-") {
		t.Errorf("the runner's output lacks the lines after the limit")
	}
}

// The sealed trail in the job's own archive verifies once extracted from
// the downloaded artifact, as `airlock audit verify` checks it.
func TestAgentAuditTrailInArchiveVerifies(t *testing.T) {
	iso := isoOpen(t)
	e := newAgentEnv(t)
	_, stop := startAgent(t, e.config(1), iso.r)
	defer stop()
	spec := gitlabSpec([]string{"mkdir out && echo built > out/app"}, nil)
	spec.Artifacts = []fakegitlab.ArtifactSpec{{Paths: []string{"out"}, Type: "archive", Format: "zip"}}
	id := e.gl.Enqueue(spec)
	if st := waitJob(t, e.gl, id, 3*time.Minute); st.Status != "success" {
		t.Fatalf("job ended %s/%s\n%s", st.Status, st.FailureReason, e.gl.Trace(id))
	}
	arts := e.gl.Artifacts(id)
	if len(arts) != 1 || arts[0].Name != "artifacts.zip" {
		t.Fatalf("job uploaded %+v, want one archive holding its files and the trail", arts)
	}
	content, _ := zipEntries(t, arts[0].Data)
	if content["out/app"] != "built\n" {
		t.Errorf("archive lacks the job's own files: %v", content)
	}
	trail, ok := content[gitlab.AuditEntry]
	if !ok {
		t.Fatalf("archive lacks %s", gitlab.AuditEntry)
	}
	key, err := audit.LoadKey(audit.KeyPath(iso.cfg.StateDir))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(strings.NewReader(trail), key.Public())
	if err != nil {
		t.Fatalf("audit.Verify(extracted trail) = %v", err)
	}
	if !strings.HasSuffix(rep.Job, fmt.Sprint(id)) {
		t.Errorf("verified trail is of job %s, want %d", rep.Job, id)
	}
	// The trail names the instance the job came from: the same repo path
	// on another GitLab is another project.
	recs, err := audit.ReadRecords(strings.NewReader(trail))
	if err != nil || len(recs) == 0 || recs[0].Type != audit.JobAccepted {
		t.Fatalf("trail's first record: %v %v, want job_accepted", recs, err)
	}
	if got := recs[0].String(audit.FieldInstance); strings.TrimRight(got, "/") != strings.TrimRight(e.gl.URL, "/") {
		t.Errorf("job_accepted instance = %q, want the fake GitLab's %q", got, e.gl.URL)
	}
}

// GIT_CLONE_PATH moves the project below the builds directory, as with
// gitlab-runner's custom build directories: the steps run there, it is
// CI_PROJECT_DIR, and artifacts are collected from it. One outside the
// builds directory fails the job, naming it.
func TestAgentCloneDir(t *testing.T) {
	e := newAgentEnv(t)
	job := gitlabSpec([]string{`echo "pwd=$(pwd) dir=$CI_PROJECT_DIR builds=$CI_BUILDS_DIR"; echo made > out.txt`}, nil)
	job.Variables = append(job.Variables, fakegitlab.Variable{Key: "GIT_CLONE_PATH", Value: "$CI_BUILDS_DIR/go/src/app", Public: true})
	job.Artifacts = []fakegitlab.ArtifactSpec{{Paths: []string{"out.txt"}, Type: "archive", Format: "zip"}}
	outside := gitlabSpec([]string{"echo ran-anyway"}, nil)
	outside.Variables = append(outside.Variables, fakegitlab.Variable{Key: "GIT_CLONE_PATH", Value: "/srv/app", Public: true})
	_, stop := startAgent(t, e.config(1), e.rec)
	defer stop()
	id, bad := e.gl.Enqueue(job), e.gl.Enqueue(outside)
	st := waitJob(t, e.gl, id, 2*time.Minute)
	trace := string(e.gl.Trace(id))
	if st.Status != "success" || !strings.Contains(trace, "pwd=/builds/go/src/app dir=/builds/go/src/app builds=/builds\n") {
		t.Fatalf("job with GIT_CLONE_PATH ended %s:\n%s", st.Status, trace)
	}
	arts := e.gl.Artifacts(id)
	if a := artifactOf(arts, "archive"); a == nil {
		t.Errorf("no archive uploaded:\n%s", trace)
	} else if content, _ := zipEntries(t, a.Data); content["out.txt"] != "made\n" {
		t.Errorf("archive = %v, want out.txt from the clone directory", keys(content))
	}
	st = waitJob(t, e.gl, bad, 2*time.Minute)
	if trace := string(e.gl.Trace(bad)); st.Status != "failed" || strings.Contains(trace, "ran-anyway") || !strings.Contains(trace, "GIT_CLONE_PATH") {
		t.Errorf("job with GIT_CLONE_PATH outside the builds directory ended %s:\n%s", st.Status, trace)
	}
}
