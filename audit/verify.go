package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"time"
)

// VerifyError names the first record at which a trail is broken. Seq is
// the sequence number the bad record has (or should have had).
type VerifyError struct {
	Seq    int64
	Reason string
}

func (e *VerifyError) Error() string { return fmt.Sprintf("seq %d: %s", e.Seq, e.Reason) }

// Report summarizes a verified trail.
type Report struct {
	Runner         string
	Job            string
	Records        int64  // records before the seal
	SealReason     string // the seal's reason
	TreeHash       string // base64
	FinalHash      string // hex
	TruncatedBytes int64  // bytes of a torn line cut off before sealing
	SignerKey      string // verifier key the signature was checked with
	First, Last    time.Time
}

// ReadRecords parses every complete line of a trail without checking it
// (for display). A line that does not parse ends the read with an error
// naming its line number; the records before it are returned.
func ReadRecords(r io.Reader) ([]Record, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var recs []Record
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if line[len(line)-1] != '\n' {
				return recs, fmt.Errorf("line %d: torn record at end of file", n)
			}
			rec, perr := ParseRecord(bytes.TrimSuffix(line, []byte("\n")))
			if perr != nil {
				return recs, fmt.Errorf("line %d: %w", n, perr)
			}
			recs = append(recs, rec)
		}
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return recs, fmt.Errorf("reading trail: %w", err)
		}
	}
}

// Verify checks a whole trail: seq continuity from 1, each record's hash,
// each prev link, that the last record is a seal, that the seal's count,
// final hash and tree hash match the records, and that its checkpoint is
// signed by pub. The error is a *VerifyError naming the first bad seq and
// what the break looks like (edited, deleted, reordered, truncated,
// appended after seal, bad signature, missing seal).
func Verify(r io.Reader, pub ed25519.PublicKey) (Report, error) {
	var rep Report
	data, err := io.ReadAll(r)
	if err != nil {
		return rep, fmt.Errorf("reading trail: %w", err)
	}
	// Split into lines; a final line without newline is torn.
	var lines [][]byte
	torn := false
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			lines = append(lines, data)
			torn = true
			break
		}
		lines = append(lines, data[:i])
		data = data[i+1:]
	}
	// Parse what parses; remember the seqs present for the diagnosis of gaps.
	recs := make([]Record, len(lines))
	perr := make([]error, len(lines))
	present := map[int64]int{}
	for i, l := range lines {
		recs[i], perr[i] = ParseRecord(l)
		if perr[i] == nil {
			present[recs[i].Seq] = i
		}
	}

	var t tree
	var prev string
	sealed := false
	for i := range lines {
		want := int64(i) + 1
		if sealed {
			return rep, &VerifyError{want, "record appended after seal"}
		}
		if torn && i == len(lines)-1 {
			return rep, &VerifyError{want, "torn record at end of file (file truncated)"}
		}
		if perr[i] != nil {
			return rep, &VerifyError{want, fmt.Sprintf("unreadable record (record edited): %v", perr[i])}
		}
		rec := recs[i]
		if rec.Seq != want {
			if j, ok := present[want]; ok && j > i {
				return rep, &VerifyError{want, fmt.Sprintf("out of order: found seq %d in its place (records reordered)", rec.Seq)}
			}
			if rec.Seq > want {
				return rep, &VerifyError{want, fmt.Sprintf("missing, next is seq %d (record deleted)", rec.Seq)}
			}
			return rep, &VerifyError{want, fmt.Sprintf("found seq %d again (record duplicated or reordered)", rec.Seq)}
		}
		if !rec.HashOK() {
			return rep, &VerifyError{want, "hash mismatch (record edited)"}
		}
		if i == 0 {
			rep.Runner, rep.Job, rep.First = rec.Runner, rec.Job, rec.Time
		} else if rec.Runner != rep.Runner || rec.Job != rep.Job {
			return rep, &VerifyError{want, fmt.Sprintf("belongs to runner %q job %q, trail is %q %q (record inserted)", rec.Runner, rec.Job, rep.Runner, rep.Job)}
		}
		if rec.Prev != prev {
			return rep, &VerifyError{want, "prev does not match the hash of the previous record (record before it edited, replaced or deleted)"}
		}
		rep.Last = rec.Time
		if rec.Type == Seal {
			if err := checkSeal(rec, &t, prev, pub, &rep); err != nil {
				return rep, err
			}
			sealed = true
		} else if err := t.add(rec.Hash); err != nil {
			return rep, &VerifyError{want, err.Error()}
		}
		prev = rec.Hash
	}
	if !sealed {
		return rep, &VerifyError{int64(len(lines)) + 1, "missing seal (trail truncated or never sealed)"}
	}
	return rep, nil
}

func checkSeal(rec Record, t *tree, prev string, pub ed25519.PublicKey, rep *Report) error {
	bad := func(format string, args ...any) error {
		return &VerifyError{rec.Seq, fmt.Sprintf(format, args...)}
	}
	root, err := t.root()
	if err != nil {
		return bad("computing tree hash: %v", err)
	}
	if n := rec.Int(FieldCount); n != t.n {
		return bad("seal counts %d records, trail has %d (records deleted or appended)", n, t.n)
	}
	if rec.String(FieldFinalHash) != prev {
		return bad("seal final hash does not match the last record (records rewritten)")
	}
	if rec.String(FieldTreeHash) != root.String() {
		return bad("seal tree hash does not match the records (records rewritten)")
	}
	c, vkey, err := openCheckpoint(rec.String(FieldCheckpoint), pub)
	switch {
	case errors.Is(err, errWrongKey):
		return bad("%v (want %s)", err, vkey)
	case errors.Is(err, errBadSignature):
		return bad("%v", err)
	case err != nil:
		return bad("checkpoint: %v", err)
	}
	switch {
	case c.Origin != origin(rec.Runner, rec.Job):
		return bad("signed checkpoint is for %q, not this trail (seal replaced)", c.Origin)
	case c.Size != t.n:
		return bad("signed checkpoint covers %d records, trail has %d (records deleted or appended)", c.Size, t.n)
	case c.Root != root:
		return bad("signed tree hash does not match the records (records rewritten)")
	case c.FinalHash != prev:
		return bad("signed final hash does not match the last record (records rewritten)")
	case c.Reason != rec.String(FieldReason) || c.Truncated != rec.Int(FieldTruncatedBytes):
		return bad("seal fields differ from the signed checkpoint (seal edited)")
	}
	rep.Records = t.n
	rep.SealReason = c.Reason
	rep.TreeHash = root.String()
	rep.FinalHash = c.FinalHash
	rep.TruncatedBytes = c.Truncated
	rep.SignerKey = vkey
	return nil
}
