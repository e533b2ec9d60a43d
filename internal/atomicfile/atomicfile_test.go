package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, content := range []string{"first\n", "second, longer\n", ""} {
		if err := WriteFile(path, []byte(content), 0o640); err != nil {
			t.Fatalf("WriteFile: %v", err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("content = %q, %v; want %q", got, err, content)
		}
		st, _ := os.Stat(path)
		if st.Mode().Perm() != 0o640 {
			t.Errorf("mode = %v, want 0640", st.Mode().Perm())
		}
	}
	if tmps, err := Temps(path); err != nil || len(tmps) != 0 {
		t.Errorf("Temps = %v, %v; want none left", tmps, err)
	}
	// A failed write (no such directory) leaves nothing.
	if err := WriteFile(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Error("WriteFile into a missing directory succeeded")
	}
	// Rename onto a directory fails: path is unchanged and no temp is left.
	sub := filepath.Join(dir, "sub")
	os.MkdirAll(filepath.Join(sub, "x"), 0o700)
	if err := WriteFile(sub, []byte("x"), 0o600); err == nil {
		t.Error("WriteFile over a non-empty directory succeeded")
	}
	if tmps, _ := Temps(sub); len(tmps) != 0 {
		t.Errorf("temporary files left after a failed rename: %v", tmps)
	}
}

func TestCreateOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "id")
	if err := CreateOnce(path, []byte("one\n"), 0o600); err != nil {
		t.Fatalf("CreateOnce: %v", err)
	}
	err := CreateOnce(path, []byte("two\n"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("second CreateOnce = %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "one\n" {
		t.Errorf("content = %q, want the first", got)
	}
	// Of many concurrent creators exactly one wins, and the file is whole.
	race := filepath.Join(dir, "race")
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := CreateOnce(race, []byte("a complete line\n"), 0o644); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, fs.ErrExist) {
				t.Errorf("CreateOnce: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d creators won, want 1", wins)
	}
	if got, _ := os.ReadFile(race); string(got) != "a complete line\n" {
		t.Errorf("content = %q", got)
	}
	if tmps, _ := Temps(race); len(tmps) != 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

func TestTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pool.json")
	left := filepath.Join(dir, ".pool.json.tmp-0123")
	for _, f := range []string{left, filepath.Join(dir, ".other.tmp-1"), path} {
		os.WriteFile(f, nil, 0o600)
	}
	got, err := Temps(path)
	if err != nil || len(got) != 1 || got[0] != left {
		t.Errorf("Temps = %v, %v; want [%s]", got, err, left)
	}
}
