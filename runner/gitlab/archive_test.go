package gitlab

import (
	"archive/zip"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// tree makes files ("name": content), directories ("name/": "") and
// symlinks ("name@": target) under a fresh directory.
func tree(t *testing.T, spec map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, v := range spec {
		p := filepath.Join(dir, strings.TrimSuffix(strings.TrimSuffix(name, "/"), "@"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(name, "/"):
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasSuffix(name, "@"):
			if err := os.Symlink(v, p); err != nil {
				t.Fatal(err)
			}
		default:
			mode := os.FileMode(0o644)
			if strings.HasSuffix(name, ".sh") {
				mode = 0o755
			}
			if err := os.WriteFile(p, []byte(v), mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func selectNames(t *testing.T, dir string, sel Selection, tracked map[string]bool) ([]string, []string) {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var warns []string
	s := &Selector{Root: root, ProjectDir: "/builds", Tracked: tracked, Warn: func(f string, a ...any) {
		warns = append(warns, f)
	}}
	entries, err := s.Select(sel)
	if err != nil {
		t.Fatalf("Select(%+v): %v", sel, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	return names, warns
}

func TestSelectFollowsGitLabRules(t *testing.T) {
	dir := tree(t, map[string]string{
		"out/a.txt":         "a",
		"out/run.sh":        "#!/bin/sh",
		"out/tmp/x.log":     "x",
		"out/sub/b.log":     "b",
		"top.log":           "t",
		"reports/junit.xml": "<xml/>",
		"src/main.go":       "package main",
		"empty/":            "",
		"out/shadow@":       "/etc/shadow",
		"escape@":           "../..",
	})
	tests := []struct {
		name    string
		sel     Selection
		tracked map[string]bool
		want    []string
	}{
		{"directory walked with its entry", Selection{Paths: []string{"out"}},
			nil, []string{"out/", "out/a.txt", "out/run.sh", "out/shadow", "out/sub/", "out/sub/b.log", "out/tmp/", "out/tmp/x.log"}},
		{"file named directly brings no parent", Selection{Paths: []string{"reports/junit.xml"}},
			nil, []string{"reports/junit.xml"}},
		{"exclude a directory entry only", Selection{Paths: []string{"out"}, Exclude: []string{"out/tmp"}},
			nil, []string{"out/", "out/a.txt", "out/run.sh", "out/shadow", "out/sub/", "out/sub/b.log", "out/tmp/x.log"}},
		{"exclude dir/** drops it and below", Selection{Paths: []string{"out"}, Exclude: []string{"out/tmp/**"}},
			nil, []string{"out/", "out/a.txt", "out/run.sh", "out/shadow", "out/sub/", "out/sub/b.log"}},
		{"star does not cross slash", Selection{Paths: []string{"*.log"}},
			nil, []string{"top.log"}},
		{"doublestar any depth", Selection{Paths: []string{"**/*.log"}},
			nil, []string{"out/sub/b.log", "out/tmp/x.log", "top.log"}},
		{"absolute path inside the project", Selection{Paths: []string{"/builds/reports"}},
			nil, []string{"reports/", "reports/junit.xml"}},
		{"outside the project refused", Selection{Paths: []string{"../etc", "/etc/passwd"}},
			nil, nil},
		{"symlink to outside stored, not walked", Selection{Paths: []string{"escape"}},
			nil, []string{"escape"}},
		{"untracked", Selection{Untracked: true},
			map[string]bool{"src/main.go": true, "top.log": true, "reports/junit.xml": true, "out/a.txt": true, "out/run.sh": true, "out/sub/b.log": true, "out/tmp/x.log": true},
			[]string{"escape", "out/shadow"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := selectNames(t, dir, tc.sel, tc.tracked)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Select(%+v) = %q, want %q", tc.sel, got, tc.want)
			}
		})
	}
}

func TestSelectWarnsOnMissingPaths(t *testing.T) {
	dir := tree(t, map[string]string{"a": "a"})
	got, warns := selectNames(t, dir, Selection{Paths: []string{"missing/**"}}, nil)
	if len(got) != 0 || len(warns) != 1 || !strings.Contains(warns[0], "no matching files") {
		t.Errorf("Select(missing) = %q, warnings %q; want none and a no-matching-files warning", got, warns)
	}
}

// The attack of the issue: ln -s /etc/shadow out/x with paths: [out] must
// archive the link, never the host file.
func TestZipStoresSymlinksNeverFollows(t *testing.T) {
	dir := tree(t, map[string]string{"out/x@": "/etc/shadow", "out/run.sh": "#!/bin/sh\necho hi\n", "out/d@": "/etc"})
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	s := &Selector{Root: root, ProjectDir: "/builds"}
	entries, err := s.Select(Selection{Paths: []string{"out", "out/d/*"}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteZip(&buf, root, entries); err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	modes := map[string]fs.FileMode{}
	for _, f := range zr.File {
		rc, _ := f.Open()
		b, _ := io.ReadAll(rc)
		rc.Close()
		got[f.Name] = string(b)
		modes[f.Name] = f.Mode()
	}
	if got["out/x"] != "/etc/shadow" || modes["out/x"]&fs.ModeSymlink == 0 {
		t.Errorf("out/x = %q mode %v, want a symlink to /etc/shadow", got["out/x"], modes["out/x"])
	}
	if modes["out/d"]&fs.ModeSymlink == 0 {
		t.Errorf("out/d mode %v, want a symlink", modes["out/d"])
	}
	if modes["out/run.sh"].Perm() != 0o755 {
		t.Errorf("out/run.sh mode %v, want 0755", modes["out/run.sh"])
	}
	if modes["out/"]&fs.ModeDir == 0 {
		t.Errorf("out/ mode %v, want a directory entry", modes["out/"])
	}
	for name := range got {
		if strings.HasPrefix(name, "out/d/") {
			t.Errorf("archive holds %s: a host directory was followed through a symlink", name)
		}
	}
	if len(got) != 4 {
		t.Errorf("archive holds %v, want out/, out/d, out/run.sh, out/x", got)
	}
}

func TestWriteGzipReport(t *testing.T) {
	dir := tree(t, map[string]string{"reports/junit.xml": "<testsuite/>", "reports/ünï.xml": "<u/>"})
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	s := &Selector{Root: root, ProjectDir: "/builds"}
	entries, err := s.Select(Selection{Paths: []string{"reports/*.xml"}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if n, err := WriteGzip(&buf, root, entries); err != nil || n != 2 {
		t.Fatalf("WriteGzip = %d, %v; want 2 members", n, err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	for {
		zr.Multistream(false)
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, zr.Name+"|"+zr.Comment+"|"+string(b))
		if err := zr.Reset(&buf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"junit.xml|reports/junit.xml|<testsuite/>", "e:%C3%BCn%C3%AF.xml|e:reports%2F%C3%BCn%C3%AF.xml|<u/>"}
	if !reflect.DeepEqual(members, want) {
		t.Errorf("gzip members = %q, want %q", members, want)
	}
}

func TestWriteRawNeedsOneFile(t *testing.T) {
	dir := tree(t, map[string]string{"a.json": "{}", "b.json": "{}"})
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	s := &Selector{Root: root, ProjectDir: "/builds"}
	entries, _ := s.Select(Selection{Paths: []string{"*.json"}})
	if err := WriteRaw(io.Discard, root, entries); !errors.Is(err, ErrRawNeedsOneFile) {
		t.Errorf("WriteRaw(two files) = %v, want ErrRawNeedsOneFile", err)
	}
}

func TestLiteralPrefixes(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{[]string{"out", "out/sub/a", "reports/*.xml"}, []string{"out", "reports"}},
		{[]string{"**/*.log", "out"}, []string{"."}},
		{[]string{"/builds/dist/app", "../x"}, []string{"dist/app"}},
	}
	for _, tc := range tests {
		if got := LiteralPrefixes("/builds", tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("LiteralPrefixes(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func zipOf(t *testing.T, entries map[string]string) *zip.Reader {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, v := range entries {
		hdr := &zip.FileHeader{Name: strings.TrimSuffix(name, "@")}
		switch {
		case strings.HasSuffix(name, "@"):
			hdr.SetMode(fs.ModeSymlink | 0o777)
		case strings.HasSuffix(name, "/"):
			hdr.SetMode(fs.ModeDir | 0o755)
		default:
			hdr.SetMode(0o755)
		}
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, v)
	}
	zw.Close()
	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return zr
}

func TestExtractZipRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name    string
		entries map[string]string
	}{
		{"dot-dot", map[string]string{"../evil": "x"}},
		{"absolute", map[string]string{"/tmp/evil": "x"}},
		// A link then a file through it: links come last, so the file
		// lands in a directory "l" and the link cannot be made over it.
		{"write through a link", map[string]string{"l@": outside, "l/evil": "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := ExtractZip(zipOf(t, tc.entries), dir, nil)
			if err == nil {
				t.Errorf("ExtractZip(%v) succeeded, want a refusal", tc.entries)
			}
			if _, serr := os.Stat(filepath.Join(outside, "evil")); serr == nil {
				t.Fatalf("ExtractZip wrote outside the directory")
			}
		})
	}
	// A link already in the directory cannot redirect a write either.
	dir := t.TempDir()
	os.Symlink(outside, filepath.Join(dir, "pre"))
	if err := ExtractZip(zipOf(t, map[string]string{"pre/evil": "x"}), dir, nil); err == nil {
		t.Errorf("ExtractZip through an existing link to outside succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "evil")); err == nil {
		t.Fatalf("ExtractZip wrote outside the directory through an existing link")
	}
}

func TestExtractZipKeepsModesAndLinks(t *testing.T) {
	dir := t.TempDir()
	if err := ExtractZip(zipOf(t, map[string]string{"bin/": "", "bin/tool": "#!/bin/sh", "link@": "bin/tool", "abs@": "/etc/shadow"}), dir, nil); err != nil {
		t.Fatal(err)
	}
	info, err := os.Lstat(filepath.Join(dir, "bin/tool"))
	if err != nil || info.Mode().Perm() != 0o755 {
		t.Errorf("bin/tool = %v, %v; want mode 0755", info, err)
	}
	for name, want := range map[string]string{"link": "bin/tool", "abs": "/etc/shadow"} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
			t.Errorf("Readlink(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
}
