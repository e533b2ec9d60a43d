package audit

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// tree accumulates the RFC 6962 Merkle tree over a trail's record hashes.
// Leaf i is tlog.RecordHash(the 32 bytes of record i's hash).
type tree struct {
	n      int64
	stored []tlog.Hash
}

func (t *tree) add(hexHash string) error {
	b, err := hex.DecodeString(hexHash)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("adding record %d to tree: malformed hash", t.n+1)
	}
	hs, err := tlog.StoredHashesForRecordHash(t.n, tlog.RecordHash(b), t)
	if err != nil {
		return fmt.Errorf("adding record %d to tree: %w", t.n+1, err)
	}
	t.stored = append(t.stored, hs...)
	t.n++
	return nil
}

// ReadHashes implements tlog.HashReader over the in-memory stored hashes.
func (t *tree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(t.stored)) {
			return nil, fmt.Errorf("reading tree hash %d: out of range", x)
		}
		out[i] = t.stored[x]
	}
	return out, nil
}

func (t *tree) root() (tlog.Hash, error) { return tlog.TreeHash(t.n, t) }

// checkpoint is the text a seal signs (a C2SP-style checkpoint with
// extension lines):
//
//	airlock/<runner>/<job>
//	<count>
//	<base64 tree hash>
//	final <hex hash of record count>
//	truncated <bytes cut from a torn last line>
//	reason <why the trail was sealed>
type checkpoint struct {
	Origin    string
	Size      int64
	Root      tlog.Hash
	FinalHash string
	Truncated int64
	Reason    string
}

func origin(runner, job string) string { return "airlock/" + runner + "/" + job }

func (c checkpoint) text() string {
	return fmt.Sprintf("%s\n%d\n%s\nfinal %s\ntruncated %d\nreason %s\n",
		c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root[:]), c.FinalHash, c.Truncated, c.Reason)
}

func parseCheckpoint(text string) (checkpoint, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != 6 {
		return checkpoint{}, errors.New("malformed checkpoint: want 6 lines")
	}
	var c checkpoint
	var err error
	c.Origin = lines[0]
	if c.Size, err = strconv.ParseInt(lines[1], 10, 64); err != nil || c.Size < 0 {
		return checkpoint{}, errors.New("malformed checkpoint size")
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != len(c.Root) {
		return checkpoint{}, errors.New("malformed checkpoint tree hash")
	}
	copy(c.Root[:], root)
	var ok bool
	if c.FinalHash, ok = strings.CutPrefix(lines[3], "final "); !ok {
		return checkpoint{}, errors.New("malformed checkpoint final line")
	}
	tr, ok := strings.CutPrefix(lines[4], "truncated ")
	if !ok {
		return checkpoint{}, errors.New("malformed checkpoint truncated line")
	}
	if c.Truncated, err = strconv.ParseInt(tr, 10, 64); err != nil {
		return checkpoint{}, errors.New("malformed checkpoint truncated count")
	}
	if c.Reason, ok = strings.CutPrefix(lines[5], "reason "); !ok {
		return checkpoint{}, errors.New("malformed checkpoint reason line")
	}
	return c, nil
}

// oneLine makes s fit on one checkpoint line: valid UTF-8 without control
// characters (note.Open refuses them).
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}

func (k *Key) signCheckpoint(c checkpoint) (string, error) {
	msg, err := note.Sign(&note.Note{Text: c.text()}, k.signer)
	if err != nil {
		return "", fmt.Errorf("signing checkpoint: %w", err)
	}
	return string(msg), nil
}

// errBadSignature and errWrongKey are the two ways a checkpoint fails to open.
var (
	errBadSignature = errors.New("bad signature (checkpoint or signature altered)")
	errWrongKey     = errors.New("signature not made by the given public key")
)

// openCheckpoint verifies the signed note with pub and parses its text.
func openCheckpoint(signed string, pub ed25519.PublicKey) (checkpoint, string, error) {
	// The signer name comes from the signature line; trust comes from pub.
	name := KeyName
	if i := strings.Index(signed, "\n\n— "); i >= 0 {
		rest := signed[i+len("\n\n— "):]
		if j := strings.IndexByte(rest, ' '); j > 0 {
			name = rest[:j]
		}
	}
	vkey, err := note.NewEd25519VerifierKey(name, pub)
	if err != nil {
		return checkpoint{}, "", fmt.Errorf("building verifier: %w", err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return checkpoint{}, "", fmt.Errorf("building verifier: %w", err)
	}
	n, err := note.Open([]byte(signed), note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &invalid):
			return checkpoint{}, vkey, errBadSignature
		case errors.As(err, &unverified):
			return checkpoint{}, vkey, errWrongKey
		default:
			return checkpoint{}, vkey, fmt.Errorf("%w: %v", errBadSignature, err)
		}
	}
	c, err := parseCheckpoint(n.Text)
	return c, vkey, err
}
