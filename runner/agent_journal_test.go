package runner

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAgentJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := openAgentJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	recs := []agentJobRecord{
		{Runner: "a", URL: "https://gitlab.example.test", JobID: 7, Token: "glcbt-64_" + agentRandomHex(12), Started: time.Now().UTC().Truncate(time.Second)},
		{Runner: "b", URL: "https://other.example.test", JobID: 7, Token: "glcbt-64_" + agentRandomHex(12), Started: time.Now().UTC().Truncate(time.Second)},
	}
	for _, r := range recs {
		if err := j.add(r); err != nil {
			t.Fatalf("add(%d) = %v", r.JobID, err)
		}
		if hits := filesContaining(t, dir, r.Token); len(hits) > 0 {
			t.Errorf("job token in plaintext in %v", hits)
		}
	}
	for _, name := range []string{agentJournalKey} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", name, err, fi.Mode())
		}
	}

	// A second open (the next start) reads them back with the same key.
	j2, err := openAgentJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := j2.list()
	if err != nil || len(got) != 2 {
		t.Fatalf("list() = %d records, %v; want 2", len(got), err)
	}
	for _, g := range got {
		var want agentJobRecord
		for _, r := range recs {
			if r.URL == g.URL {
				want = r
			}
		}
		if g != want {
			t.Errorf("list() gave %+v, want %+v", g, want)
		}
	}

	// A tampered record is reported and skipped, the others still read.
	ents, _ := os.ReadDir(j.dir)
	victim := filepath.Join(j.dir, ents[0].Name())
	b, _ := os.ReadFile(victim)
	b[len(b)-1] ^= 1
	os.WriteFile(victim, b, 0o600)
	got, err = j2.list()
	if err == nil || !strings.Contains(err.Error(), "authentication failed") || len(got) != 1 {
		t.Errorf("list() after tampering = %d records, %v; want 1 and an authentication error", len(got), err)
	}
	if err := j.remove(recs[0].URL, recs[0].JobID); err != nil {
		t.Fatal(err)
	}
	if err := j.remove(recs[1].URL, recs[1].JobID); err != nil {
		t.Fatal(err)
	}
	if err := j.remove(recs[1].URL, recs[1].JobID); err != nil {
		t.Errorf("remove() of a missing record = %v, want nil", err)
	}
	if got, err := j2.list(); err != nil || len(got) != 0 {
		t.Errorf("list() after remove = %v, %v; want none", got, err)
	}
	// A record renamed to another job's name does not open either.
	if err := j.add(recs[0]); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(j.dir, j.name(recs[0].URL, recs[0].JobID))
	if err := os.Rename(old, filepath.Join(j.dir, j.name(recs[0].URL, 8))); err != nil {
		t.Fatal(err)
	}
	if got, err := j2.list(); err == nil || len(got) != 0 {
		t.Errorf("list() with a renamed record = %v, %v; want an error", got, err)
	}
}

func TestAgentJournalRefusesUnsafeKey(t *testing.T) {
	tests := []struct {
		name string
		key  []byte
		mode os.FileMode
		want string
	}{
		{name: "readable by others", key: bytes.Repeat([]byte{1}, agentKeySize), mode: 0o644, want: "readable by others"},
		{name: "wrong size", key: []byte("short"), mode: 0o600, want: "want 32"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, agentJournalKey)
			if err := os.WriteFile(path, tc.key, tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tc.mode)
			if _, err := openAgentJournal(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("openAgentJournal() = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
