// Package audit writes the tamper-evident audit trail of a job: one
// JSON-lines file per job whose records form a SHA-256 hash chain, closed by
// a seal record that carries an Ed25519-signed checkpoint (a
// golang.org/x/mod/sumdb/note over an RFC 6962 tree hash of every record
// hash). Records are appended to a durable spool (fsync before Append
// returns) and shipped from there to sinks (a directory, an HTTP(S)
// collector, stdout), each of which remembers its position, so a sink that
// is down or a runner that crashes loses nothing. Verify checks a trail and
// names the first bad record.
//
// A trail never contains a secret value: credentials are identified by
// secret name, grant id, lease id and a short fingerprint, and every string
// of every record passes through the Mask hook the runner installs.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Keys of the envelope every record carries; event fields may not use them.
const (
	KeySeq    = "seq"
	KeyTime   = "time"
	KeyRunner = "runner"
	KeyJob    = "job"
	KeyType   = "type"
	KeyPrev   = "prev"
	KeyHash   = "hash"
)

var reservedKeys = map[string]bool{
	KeySeq: true, KeyTime: true, KeyRunner: true, KeyJob: true,
	KeyType: true, KeyPrev: true, KeyHash: true,
}

// Record is one line of a trail. Hash is the hex SHA-256 of the canonical
// JSON of the record without its "hash" key; Prev is the Hash of the
// previous record ("" for seq 1).
type Record struct {
	Seq    int64
	Time   time.Time
	Runner string
	Job    string
	Type   EventType
	Fields Fields
	Prev   string
	Hash   string

	raw []byte // the line as stored, without the newline
}

// Raw returns the record's line as stored (canonical JSON, no newline).
func (r Record) Raw() []byte { return r.raw }

// String returns the value of a field as a string ("" when absent).
func (r Record) String(key string) string {
	switch v := r.Fields[key].(type) {
	case string:
		return v
	case nil:
		return ""
	case json.Number:
		return v.String()
	default:
		return fmt.Sprint(v)
	}
}

// Int returns the value of a numeric field (0 when absent or not a number).
func (r Record) Int(key string) int64 {
	switch v := r.Fields[key].(type) {
	case json.Number:
		n, err := v.Int64()
		if err != nil {
			f, _ := v.Float64()
			return int64(f)
		}
		return n
	case int64:
		return v
	case int:
		return int64(v)
	case float64:
		return int64(v)
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

// envelope returns the record as one map: envelope keys plus fields.
// withHash selects whether the "hash" key is included.
func (r Record) envelope(withHash bool) map[string]any {
	m := make(map[string]any, len(r.Fields)+7)
	for k, v := range r.Fields {
		m[k] = v
	}
	m[KeySeq] = r.Seq
	m[KeyTime] = r.Time.UTC().Format(time.RFC3339Nano)
	m[KeyRunner] = r.Runner
	m[KeyJob] = r.Job
	m[KeyType] = string(r.Type)
	m[KeyPrev] = r.Prev
	if withHash {
		m[KeyHash] = r.Hash
	}
	return m
}

// canonical encodes v as canonical JSON: object keys sorted (encoding/json
// sorts map keys), no insignificant whitespace, no HTML escaping. Values
// must already be normalized (see normalize) so that decoding and
// re-encoding a line yields the same bytes.
func canonical(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// normalize turns arbitrary field values into the generic JSON shape
// (map[string]any, []any, string, json.Number, bool, nil) that decoding a
// line produces, so the hash computed when writing equals the hash
// recomputed when verifying.
func normalize(fields Fields) (Fields, error) {
	if len(fields) == 0 {
		return Fields{}, nil
	}
	b, err := json.Marshal(map[string]any(fields))
	if err != nil {
		return nil, fmt.Errorf("encoding fields: %w", err)
	}
	var out map[string]any
	if err := decodeJSON(b, &out); err != nil {
		return nil, fmt.Errorf("normalizing fields: %w", err)
	}
	return Fields(out), nil
}

func decodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

// computeHash returns the hex SHA-256 of the canonical record without "hash".
func (r Record) computeHash() (string, error) {
	b, err := canonical(r.envelope(false))
	if err != nil {
		return "", fmt.Errorf("encoding record %d: %w", r.Seq, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// finish fills Hash and raw for a record whose other parts are set.
func (r *Record) finish() error {
	h, err := r.computeHash()
	if err != nil {
		return err
	}
	r.Hash = h
	raw, err := canonical(r.envelope(true))
	if err != nil {
		return fmt.Errorf("encoding record %d: %w", r.Seq, err)
	}
	r.raw = raw
	return nil
}

// ParseRecord decodes one trail line. It checks the shape of the envelope
// but not the hash; see (Record).HashOK and Verify.
func ParseRecord(line []byte) (Record, error) {
	var m map[string]any
	if err := decodeJSON(line, &m); err != nil {
		return Record{}, fmt.Errorf("decoding record: %w", err)
	}
	if m == nil {
		return Record{}, errors.New("decoding record: not a JSON object")
	}
	r := Record{raw: append([]byte(nil), line...)}
	num, ok := m[KeySeq].(json.Number)
	if !ok {
		return Record{}, errors.New("decoding record: missing or non-numeric seq")
	}
	seq, err := num.Int64()
	if err != nil {
		return Record{}, fmt.Errorf("decoding record: seq: %w", err)
	}
	r.Seq = seq
	str := func(k string) (string, error) {
		s, ok := m[k].(string)
		if !ok {
			return "", fmt.Errorf("decoding record %d: missing or non-string %q", seq, k)
		}
		return s, nil
	}
	ts, err := str(KeyTime)
	if err != nil {
		return Record{}, err
	}
	if r.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
		return Record{}, fmt.Errorf("decoding record %d: time: %w", seq, err)
	}
	if r.Runner, err = str(KeyRunner); err != nil {
		return Record{}, err
	}
	if r.Job, err = str(KeyJob); err != nil {
		return Record{}, err
	}
	typ, err := str(KeyType)
	if err != nil {
		return Record{}, err
	}
	r.Type = EventType(typ)
	if r.Prev, err = str(KeyPrev); err != nil {
		return Record{}, err
	}
	if r.Hash, err = str(KeyHash); err != nil {
		return Record{}, err
	}
	r.Fields = Fields{}
	for k, v := range m {
		if !reservedKeys[k] {
			r.Fields[k] = v
		}
	}
	return r, nil
}

// HashOK reports whether the record's Hash matches its content.
func (r Record) HashOK() bool {
	h, err := r.computeHash()
	return err == nil && h == r.Hash
}
