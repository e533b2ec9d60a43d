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
	tokens := []string{"glcbt-64_" + agentRandomHex(12), "glcbt-64_" + agentRandomHex(12)}
	recs := []agentJobRecord{
		{Coordinator: "gitlab:a", JobID: "gitlab-aaaa-7", Lease: []byte(`{"token":"` + tokens[0] + `"}`), Started: time.Now().UTC().Truncate(time.Second)},
		{Coordinator: "gitlab:b", JobID: "gitlab-bbbb-7", Lease: []byte(`{"token":"` + tokens[1] + `"}`), Started: time.Now().UTC().Truncate(time.Second)},
	}
	names := make([]string, len(recs))
	for i, r := range recs {
		if names[i], err = j.add(r); err != nil {
			t.Fatalf("add(%s) = %v", r.JobID, err)
		}
		if hits := filesContaining(t, dir, tokens[i]); len(hits) > 0 {
			t.Errorf("job token in plaintext in %v", hits)
		}
	}
	if names[0] == names[1] {
		t.Errorf("two records got the same name %s", names[0])
	}
	for _, name := range []string{agentJournalKey} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", name, err, fi.Mode())
		}
	}
	// An update replaces the record in place.
	updated := recs[1]
	updated.Lease = []byte(`{"token":"` + tokens[1] + `","trace":{"size":12}}`)
	if err := j.update(names[1], updated); err != nil {
		t.Fatalf("update() = %v", err)
	}
	recs[1] = updated

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
			if r.Coordinator == g.Coordinator {
				want = r
			}
		}
		if g.JobID != want.JobID || !bytes.Equal(g.Lease, want.Lease) || !g.Started.Equal(want.Started) {
			t.Errorf("list() gave %+v, want %+v", g.agentJobRecord, want)
		}
	}

	// A tampered record is reported and skipped, the others still read.
	victim := filepath.Join(j.dir, names[0])
	b, _ := os.ReadFile(victim)
	b[len(b)-1] ^= 1
	os.WriteFile(victim, b, 0o600)
	got, err = j2.list()
	if err == nil || !strings.Contains(err.Error(), "authentication failed") || len(got) != 1 {
		t.Errorf("list() after tampering = %d records, %v; want 1 and an authentication error", len(got), err)
	}
	for _, n := range []string{names[0], names[1], names[1]} {
		if err := j.remove(n); err != nil {
			t.Errorf("remove(%s) = %v, want nil (also for a missing record)", n, err)
		}
	}
	if got, err := j2.list(); err != nil || len(got) != 0 {
		t.Errorf("list() after remove = %v, %v; want none", got, err)
	}
	// A record renamed to another record's name does not open either.
	name, err := j.add(recs[0])
	if err != nil {
		t.Fatal(err)
	}
	other := "0" + name[1:]
	if other == name {
		other = "1" + name[1:]
	}
	if err := os.Rename(filepath.Join(j.dir, name), filepath.Join(j.dir, other)); err != nil {
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

// A record write a crash cut short leaves a temporary file beside the
// records; recovery removes it (it was left forever, and the journal
// directory of a host that crashed often filled with them), records stay.
func TestAgentJournalSweepsInterruptedWrites(t *testing.T) {
	dir := t.TempDir()
	j, err := openAgentJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	name, err := j.add(agentJobRecord{Coordinator: "gitlab:a", JobID: "gitlab-aaaa-1", Lease: []byte(`{}`), Started: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	temp := filepath.Join(j.dir, "."+name+".tmp-0123456789abcdef")
	if err := os.WriteFile(temp, []byte("half a record"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := j.sweepTemps(); err != nil {
		t.Fatalf("sweepTemps() = %v", err)
	}
	ents, _ := os.ReadDir(j.dir)
	if len(ents) != 1 || ents[0].Name() != name {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("journal after the sweep holds %v, want only %s", names, name)
	}
	if recs, err := j.list(); err != nil || len(recs) != 1 {
		t.Errorf("list() after the sweep = %d records, %v; want the one", len(recs), err)
	}
}
