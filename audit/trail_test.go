package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testKey(t testing.TB) *Key {
	t.Helper()
	k, err := LoadOrCreateKey(filepath.Join(t.TempDir(), KeyFile))
	if err != nil {
		t.Fatalf("LoadOrCreateKey: %v", err)
	}
	return k
}

// writeTrail writes n step records and a seal; it returns the file's bytes.
func writeTrail(t testing.TB, key *Key, n int) []byte {
	t.Helper()
	dir := t.TempDir()
	tr, err := Open(dir, "runner-1", "job-1", key)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx := context.Background()
	if _, err := tr.Log(ctx, NewJobAccepted("local", "", "acme/app", "main", "abc", true, "", "img")); err != nil {
		t.Fatalf("Log: %v", err)
	}
	for i := 2; i <= n; i++ {
		if _, err := tr.Log(ctx, NewStepFinished(fmt.Sprintf("s%d", i), 0, time.Second)); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	if _, err := tr.Seal(ctx, "finished"); err != nil {
		t.Fatalf("Seal: %v", err)
	}
	b, err := os.ReadFile(SpoolPath(dir, "job-1"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestChainRoundTrip(t *testing.T) {
	key := testKey(t)
	data := writeTrail(t, key, 10)
	rep, err := Verify(bytes.NewReader(data), key.Public())
	if err != nil {
		t.Fatalf("Verify = %v, want nil", err)
	}
	if rep.Records != 10 || rep.SealReason != "finished" || rep.Job != "job-1" || rep.Runner != "runner-1" {
		t.Errorf("Verify report = %+v, want 10 records, reason finished, job-1/runner-1", rep)
	}
	recs, err := ReadRecords(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("ReadRecords: %v", err)
	}
	if len(recs) != 11 || recs[0].Type != JobAccepted || recs[10].Type != Seal {
		t.Fatalf("ReadRecords = %d records, want 11 from job_accepted to seal", len(recs))
	}
	for i, r := range recs {
		if r.Seq != int64(i+1) {
			t.Errorf("record %d seq = %d", i, r.Seq)
		}
		if r.Time.Location() != time.UTC {
			t.Errorf("record %d time not UTC", i)
		}
		// Canonical: re-encoding the parsed record gives the same bytes.
		again, err := canonical(r.envelope(true))
		if err != nil || !bytes.Equal(again, r.Raw()) {
			t.Errorf("record %d is not canonical:\n%s\n%s", r.Seq, r.Raw(), again)
		}
	}
	if recs[0].Prev != "" || recs[1].Prev != recs[0].Hash {
		t.Errorf("prev links wrong: %q, %q", recs[0].Prev, recs[1].Prev)
	}
	// The verifier-key format round-trips through ParsePublicKey.
	pub, err := ParsePublicKey(key.VerifierKey())
	if err != nil || !pub.Equal(key.Public()) {
		t.Errorf("ParsePublicKey(%q) = %v, %v", key.VerifierKey(), pub, err)
	}
}

func TestKeyPermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", KeyFile)
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatalf("LoadOrCreateKey: %v", err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode = %v, %v, want 0600", st.Mode().Perm(), err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !k2.Public().Equal(k1.Public()) {
		t.Fatalf("second LoadOrCreateKey = %v, want the same key", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "too open") {
		t.Errorf("LoadOrCreateKey(0644 file) = %v, want a too-open error", err)
	}
}

// rechain re-hashes records from index from on (as an attacker without the
// key would), fixing prev links and the seal's final and tree hashes.
func rechain(t *testing.T, lines [][]byte, from int) [][]byte {
	t.Helper()
	var tr tree
	prev := ""
	out := make([][]byte, len(lines))
	for i, l := range lines {
		r, err := ParseRecord(l)
		if err != nil {
			t.Fatal(err)
		}
		if i >= from {
			r.Prev = prev
			if r.Type == Seal {
				root, _ := tr.root()
				r.Fields[FieldFinalHash] = prev
				r.Fields[FieldTreeHash] = root.String()
			}
			if err := r.finish(); err != nil {
				t.Fatal(err)
			}
		}
		if r.Type != Seal {
			if err := tr.add(r.Hash); err != nil {
				t.Fatal(err)
			}
		}
		prev = r.Hash
		out[i] = r.Raw()
	}
	return out
}

func TestVerifyDetectsTampering(t *testing.T) {
	key := testKey(t)
	data := writeTrail(t, key, 10) // seq 1..10, seal is seq 11
	split := func() [][]byte {
		return bytes.Split(bytes.TrimSuffix(bytes.Clone(data), []byte("\n")), []byte("\n"))
	}
	join := func(lines [][]byte) []byte { return append(bytes.Join(lines, []byte("\n")), '\n') }
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)

	tests := []struct {
		name    string
		mutate  func() []byte
		pub     ed25519.PublicKey
		wantSeq int64
		want    string
	}{
		{"edit a field", func() []byte {
			l := split()
			l[6] = bytes.Replace(l[6], []byte(`"step":"s7"`), []byte(`"step":"evil"`), 1)
			return join(l)
		}, nil, 7, "record edited"},
		{"edit a field and re-hash the chain", func() []byte {
			l := split()
			l[6] = bytes.Replace(l[6], []byte(`"step":"s7"`), []byte(`"step":"evil"`), 1)
			return join(rechain(t, l, 6))
		}, nil, 11, "records rewritten"},
		{"edit a field, re-hash only that record", func() []byte {
			l := split()
			l[6] = bytes.Replace(l[6], []byte(`"step":"s7"`), []byte(`"step":"evil"`), 1)
			l = rechain(t, l, 6)
			o := split()
			return join(append(l[:7:7], o[7:]...))
		}, nil, 8, "prev does not match"},
		{"delete a record", func() []byte {
			l := split()
			return join(append(l[:4:4], l[5:]...))
		}, nil, 5, "record deleted"},
		{"delete the last record before the seal", func() []byte {
			l := split()
			return join(append(l[:9:9], l[10]))
		}, nil, 10, "record deleted"},
		{"swap two records", func() []byte {
			l := split()
			l[2], l[3] = l[3], l[2]
			return join(l)
		}, nil, 3, "reordered"},
		{"truncate mid-record", func() []byte {
			l := split()
			b := join(l[:8])
			return append(b, l[8][:len(l[8])/2]...)
		}, nil, 9, "truncated"},
		{"truncate at a record boundary", func() []byte {
			return join(split()[:6])
		}, nil, 7, "missing seal"},
		{"remove the seal", func() []byte {
			return join(split()[:10])
		}, nil, 11, "missing seal"},
		{"append a record after the seal", func() []byte {
			l := split()
			last, _ := ParseRecord(l[10])
			extra := Record{Seq: 12, Time: last.Time, Runner: last.Runner, Job: last.Job,
				Type: StepStarted, Fields: Fields{FieldStep: "late"}, Prev: last.Hash}
			if err := extra.finish(); err != nil {
				t.Fatal(err)
			}
			return join(append(l, extra.Raw()))
		}, nil, 12, "appended after seal"},
		{"change the signature", func() []byte {
			l := split()
			r, _ := ParseRecord(l[10])
			cp := r.String(FieldCheckpoint)
			i := strings.LastIndex(cp, " ") + 10 // inside the base64 signature, past the key hash
			b := []byte(cp)
			if b[i] == 'A' {
				b[i] = 'B'
			} else {
				b[i] = 'A'
			}
			r.Fields[FieldCheckpoint] = string(b)
			if err := r.finish(); err != nil {
				t.Fatal(err)
			}
			l[10] = r.Raw()
			return join(l)
		}, nil, 11, "bad signature"},
		{"edit the seal without re-hashing", func() []byte {
			l := split()
			l[10] = bytes.Replace(l[10], []byte(`"reason":"finished"`), []byte(`"reason":"fine"`), 1)
			return join(l)
		}, nil, 11, "record edited"},
		{"wrong public key", func() []byte { return bytes.Clone(data) }, otherPub, 11, "not made by the given public key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pub := tc.pub
			if pub == nil {
				pub = key.Public()
			}
			_, err := Verify(bytes.NewReader(tc.mutate()), pub)
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("Verify = %v, want a *VerifyError at seq %d", err, tc.wantSeq)
			}
			if ve.Seq != tc.wantSeq || !strings.Contains(ve.Reason, tc.want) {
				t.Errorf("Verify = %q, want seq %d: ...%s...", err, tc.wantSeq, tc.want)
			}
		})
	}
}

func TestAppendRefusesReservedKeysAndAfterSeal(t *testing.T) {
	key := testKey(t)
	dir := t.TempDir()
	tr, err := Open(dir, "r", "j", key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, k := range []string{KeySeq, KeyHash, KeyPrev, KeyType} {
		if _, err := tr.Append(ctx, Alert, Fields{k: "x"}); err == nil {
			t.Errorf("Append(field %q) = nil, want an error", k)
		}
	}
	if _, err := tr.Append(ctx, Seal, nil); err == nil {
		t.Error("Append(seal) = nil, want an error")
	}
	if _, err := tr.Seal(ctx, "finished"); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Append(ctx, Alert, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Seal = %v, want ErrClosed", err)
	}
	if _, err := Open(dir, "r", "j", key); !errors.Is(err, ErrSealed) {
		t.Errorf("Open(sealed) = %v, want ErrSealed", err)
	}
}

func TestReopenContinuesChain(t *testing.T) {
	key := testKey(t)
	dir := t.TempDir()
	ctx := context.Background()
	tr, err := Open(dir, "r", "j", key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, "r", "j", key); !errors.Is(err, ErrLocked) {
		t.Errorf("second Open while open = %v, want ErrLocked", err)
	}
	tr.Log(ctx, NewStepStarted("a"))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, "other", "j", key); !errors.Is(err, ErrOtherRunner) {
		t.Errorf("Open by another runner = %v, want ErrOtherRunner", err)
	}
	tr, err = Open(dir, "r", "j", key)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := tr.Log(ctx, NewStepFinished("a", 0, time.Second))
	if err != nil || rec.Seq != 2 {
		t.Fatalf("Log after reopen = seq %d, %v, want seq 2", rec.Seq, err)
	}
	if _, err := tr.Seal(ctx, "finished"); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(SpoolPath(dir, "j"))
	defer f.Close()
	if _, err := Verify(f, key.Public()); err != nil {
		t.Errorf("Verify after reopen = %v", err)
	}
}

func TestConcurrentAppends(t *testing.T) {
	key := testKey(t)
	dir := t.TempDir()
	tr, err := Open(dir, "r", "j", key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			var err error
			for i := range 25 {
				if _, e := tr.Log(ctx, NewStepStarted(fmt.Sprintf("w%d-%d", w, i))); e != nil {
					err = e
				}
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Seal(ctx, "finished"); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(SpoolPath(dir, "j"))
	defer f.Close()
	rep, err := Verify(f, key.Public())
	if err != nil || rep.Records != 200 {
		t.Errorf("Verify = %d records, %v, want 200, nil", rep.Records, err)
	}
}
