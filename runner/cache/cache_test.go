package cache

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSanitize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"deps", "deps"},
		{"a/../../b", "b"},
		{"key%2f..%2fx", "x"},
		{`win\key `, "win/key"},
		{"../../etc/passwd", "etc/passwd"},
		{"%2e%2e/%2e%2e/root", "root"},
	}
	for _, tc := range tests {
		got, err := Sanitize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Sanitize(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "../..", " / ", "."} {
		if got, err := Sanitize(bad); err == nil {
			t.Errorf("Sanitize(%q) = %q, want an error", bad, got)
		}
	}
}

func save(t *testing.T, s *Store, project, key string, protected bool, data string) {
	t.Helper()
	if err := s.Save(project, key, protected, func(w io.Writer) error {
		_, err := io.WriteString(w, data)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, s *Store, project, key string, protected bool) (string, error) {
	t.Helper()
	f, err := s.Open(project, key, protected)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

func TestProtectionLevelsNeverMix(t *testing.T) {
	s, err := New(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	save(t, s, "g/p", "deps", true, "protected")
	if _, err := read(t, s, "g/p", "deps", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("unprotected Open of a protected cache = %v, want ErrNotExist", err)
	}
	save(t, s, "g/p", "deps", false, "unprotected")
	if got, _ := read(t, s, "g/p", "deps", true); got != "protected" {
		t.Errorf("protected cache = %q after an unprotected save, want it untouched", got)
	}
	if _, err := read(t, s, "g/other", "deps", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("another project's Open = %v, want ErrNotExist", err)
	}
}

func TestKeysStayInside(t *testing.T) {
	dir := t.TempDir()
	s, _ := New(filepath.Join(dir, "cache"), 0)
	save(t, s, "g/p", "../../../escape", false, "x")
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(p, filepath.Join(dir, "cache")+"/") {
			t.Errorf("cache wrote %s outside its directory", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	s, _ := New(t.TempDir(), 250)
	data := strings.Repeat("x", 100)
	save(t, s, "p", "old", false, data)
	save(t, s, "p", "used", false, data)
	// Make "old" older than "used", then use "used".
	dirOld, _, _ := s.entryDir("p", "old", false)
	past := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dirOld, "cache.zip"), past, past)
	if _, err := read(t, s, "p", "used", false); err != nil {
		t.Fatal(err)
	}
	save(t, s, "p", "new", false, data)
	if _, err := read(t, s, "p", "old", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("least recently used cache still there (%v), want it evicted", err)
	}
	for _, k := range []string{"used", "new"} {
		if _, err := read(t, s, "p", k, false); err != nil {
			t.Errorf("cache %s: %v, want it kept", k, err)
		}
	}
}
