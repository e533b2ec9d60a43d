package leakscan

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testRepo is a throw-away git repository.
type testRepo struct {
	t   testing.TB
	dir string
}

func newRepo(t testing.TB) *testRepo {
	t.Helper()
	r := &testRepo{t: t, dir: t.TempDir()}
	r.git("init", "-q", "-b", "main")
	r.commit("README", "hello\n")
	return r
}

func (r *testRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-C", r.dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.test",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.test", "GIT_CONFIG_NOSYSTEM=1", "HOME="+r.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes file and commits it; it returns the commit's sha.
func (r *testRepo) commit(file, content string) string {
	r.t.Helper()
	path := filepath.Join(r.dir, file)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.git("add", file)
	r.git("commit", "-q", "-m", "add "+file)
	return r.git("rev-parse", "HEAD")
}

// An AWS-style access key id that is not anyone's (gitleaks' rule:
// (A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}).
const awsKey = "AKIAZ7QK3MVX2LPRT4WN"

func TestScanFindsRuleAndStoredSecret(t *testing.T) {
	r := newRepo(t)
	base := r.git("rev-parse", "HEAD")
	stored := "s3cr3t-stored-Value-9f2c1"
	r.commit("config/aws.env", "# deploy\nregion = eu-west-1\naws_access_key_id = "+awsKey+"\n")
	head := r.commit("src/app.txt", "line one\nline two\ntoken: "+stored+"\n")
	s := &Scanner{Values: map[string]string{"deploy-token": stored, "tiny": "short"}}
	rep, err := s.Scan(context.Background(), Range{GitDir: r.dir, Base: base, Head: head})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Commits != 2 || rep.Cut != "" || rep.Note != "" {
		t.Errorf("report: %d commits, cut %q, note %q; want 2 commits, whole range", rep.Commits, rep.Cut, rep.Note)
	}
	var aws, sec *Finding
	for i, f := range rep.Findings {
		switch {
		case f.Secret == "deploy-token":
			sec = &rep.Findings[i]
		case strings.Contains(f.Rule, "aws"):
			aws = &rep.Findings[i]
		}
	}
	if aws == nil || aws.File != "config/aws.env" || aws.Line != 3 || aws.Commit == head || len(aws.Commit) != 40 {
		t.Errorf("AWS key finding = %+v, want config/aws.env:3 in the first commit; all: %+v", aws, rep.Findings)
	}
	if sec == nil || sec.File != "src/app.txt" || sec.Line != 3 || sec.Commit != head || sec.Rule != RuleStoredSecret {
		t.Errorf("stored secret finding = %+v, want src/app.txt:3 in head; all: %+v", sec, rep.Findings)
	}
	text := fmt.Sprint(rep.Findings)
	for _, f := range rep.Findings {
		text += f.String()
	}
	for _, v := range []string{awsKey, stored} {
		if strings.Contains(text, v) {
			t.Errorf("a finding shows the credential %q…: %s", v[:6], text)
		}
	}
	if sec != nil && !strings.Contains(sec.String(), "rotate it") {
		t.Errorf("stored-secret finding does not say to rotate: %s", sec)
	}
}

func TestScanCleanChange(t *testing.T) {
	r := newRepo(t)
	base := r.git("rev-parse", "HEAD")
	head := r.commit("main.go", "package main\n\nfunc main() { println(\"AKIA is a prefix, not a key\") }\n")
	rep, err := (&Scanner{Values: map[string]string{"x": "not-in-the-change-123"}}).Scan(context.Background(), Range{GitDir: r.dir, Base: base, Head: head})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 0 {
		t.Errorf("clean change: findings %+v", rep.Findings)
	}
}

func TestScanNewBranchAndBounds(t *testing.T) {
	r := newRepo(t)
	head := r.commit("k.txt", "key = "+awsKey+"\n")
	rep, err := (&Scanner{}).Scan(context.Background(), Range{GitDir: r.dir, Base: strings.Repeat("0", 40), Head: head})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 1 || !strings.Contains(rep.Note, "new branch") {
		t.Errorf("new branch: %d findings, note %q; want the head commit scanned", len(rep.Findings), rep.Note)
	}
	rep, err = (&Scanner{}).Scan(context.Background(), Range{GitDir: r.dir, Base: strings.Repeat("ab", 20), Head: head})
	if err != nil || !strings.Contains(rep.Note, "not in the clone") {
		t.Errorf("missing base: %v, note %q", err, rep.Note)
	}
	base := head
	var b strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&b, "filler line %d of a large change\n", i)
	}
	head = r.commit("big.txt", b.String())
	rep, err = (&Scanner{MaxBytes: 4096}).Scan(context.Background(), Range{GitDir: r.dir, Base: base, Head: head})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rep.Cut, "larger than") {
		t.Errorf("bounded scan: cut %q, want a note that it was cut", rep.Cut)
	}
	rep, err = (&Scanner{MaxTime: time.Nanosecond}).Scan(context.Background(), Range{GitDir: r.dir, Base: base, Head: head})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Cut == "" {
		t.Errorf("scan bounded to 1ns was not cut")
	}
}

// BenchmarkScan10kLines scans a change adding 10,000 lines (one commit)
// and reports MB/s of diff: ordinary code, and the worst case of a
// gitleaks keyword ("password") on every line, which makes its generic
// rules' regular expressions run over the whole file.
func BenchmarkScan10kLines(b *testing.B) {
	for _, tc := range []struct{ name, line string }{
		{"ordinary", "\tresult%d := compute(input, %d) // plain code\n"},
		{"keyword-every-line", "const value%d = \"some ordinary code on line %d, password handling aside\"\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := newRepo(b)
			base := r.git("rev-parse", "HEAD")
			var sb strings.Builder
			for i := range 10000 {
				fmt.Fprintf(&sb, tc.line, i, i)
			}
			head := r.commit("gen.go", sb.String())
			s := &Scanner{Values: map[string]string{"a": "stored-value-0001-abcdef", "b": "stored-value-0002-abcdef"}}
			b.ResetTimer()
			var bytes int64
			for range b.N {
				rep, err := s.Scan(context.Background(), Range{GitDir: r.dir, Base: base, Head: head})
				if err != nil {
					b.Fatal(err)
				}
				bytes = rep.Bytes
			}
			b.SetBytes(bytes)
		})
	}
}

// TestScanShallowClone: in a shallow clone whose head has no parent there,
// an unknown base scans nothing (the diff would show the whole tree as
// added, old files included) and says so.
func TestScanShallowClone(t *testing.T) {
	r := newRepo(t)
	r.commit("old.env", "key = "+awsKey+"\n")
	r.commit("new.txt", "harmless\n")
	clone := t.TempDir()
	out, err := exec.Command("git", "clone", "-q", "--depth", "1", "file://"+r.dir, clone).CombinedOutput()
	if err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	head := strings.TrimSpace(func() string {
		b, _ := exec.Command("git", "-C", clone, "rev-parse", "HEAD").Output()
		return string(b)
	}())
	rep, err := (&Scanner{}).Scan(context.Background(), Range{GitDir: clone, Head: head})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 0 || !strings.Contains(rep.Note, "shallow") {
		t.Errorf("shallow clone, no base: findings %+v, note %q; want none and a note", rep.Findings, rep.Note)
	}
}
