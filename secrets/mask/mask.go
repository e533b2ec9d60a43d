// Package mask replaces secret values in job output before it reaches any
// sink (terminal, coordinator trace, files).
//
// A Writer masks, with Replacement:
//   - every registered value of at least MinLength bytes;
//   - its base64 encodings (standard and URL alphabets, padded and unpadded,
//     and the part of a larger base64 blob that depends only on the value,
//     whatever the value's offset in the blob), its URL query and path
//     escapings and its JSON string escaping;
//   - well-known tokens: a prefix from one table (ghp_, github_pat_, glpat-,
//     AKIA, xoxb-, sk_live_, ...) together with the run of token body bytes
//     after it.
//
// Matching is exact across arbitrary Write boundaries: an Aho-Corasick
// automaton, compiled to a dense byte-class DFA, carries its state from one
// Write to the next. Where matches overlap, the union of their regions is
// masked as one, so no part of a value is revealed. Output is released as
// soon as it cannot be part of a match: a Writer holds back at most the
// longest pattern minus one byte, or a token prefix with a body still too
// short to be a token (20 bytes for AWS key ids). Once a token is certain,
// its Replacement is written at once and the rest of its body is swallowed
// as it arrives.
package mask

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("writing to masker: already closed")

// Writer is a streaming masker: an io.WriteCloser that writes its input to
// an underlying writer with secrets replaced. It is safe for concurrent use;
// Writes are serialised, and Add may be called while output flows.
type Writer struct {
	mu      sync.Mutex
	w       io.Writer
	values  map[string]struct{}
	pats    []pattern
	sc      scanner
	refused int
	err     error
	closed  bool
	// fold is the case-insensitive automaton of MaskFold, built for the
	// first foldGen patterns.
	fold    *automaton
	foldGen int
}

// New returns a Writer that masks values (and their encodings, and the
// well-known tokens) in everything written to it before passing it to w.
// Values shorter than MinLength are not masked (they would match ordinary
// words); Refused reports how many were turned away. Use Validate to refuse
// such values when they are stored.
func New(w io.Writer, values ...string) *Writer {
	m := &Writer{w: w, values: map[string]struct{}{}}
	for _, t := range tokenPrefixes {
		m.pats = append(m.pats, pattern{text: t.prefix, prefix: len(m.pats)})
	}
	m.register(values)
	m.sc.a = build(m.pats, denseBudget)
	return m
}

// register adds the patterns of the values not yet known and reports how
// many new values it registered.
func (m *Writer) register(values []string) int {
	added := 0
	for _, v := range values {
		if len(v) < MinLength {
			m.refused++
			continue
		}
		if _, ok := m.values[v]; ok {
			continue
		}
		m.values[v] = struct{}{}
		for _, s := range variants(v) {
			m.pats = append(m.pats, pattern{text: s, prefix: -1})
		}
		added++
	}
	return added
}

// Add registers more values at run time, for example a credential minted
// after output began. They are masked from the next byte of output on,
// including output written before Add that the Writer still holds back.
// Values shorter than MinLength are refused; Add returns how many.
// Add rebuilds the automaton, which costs time proportional to the total
// size of all values; call it with all new values at once.
func (m *Writer) Add(values ...string) (refused int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	before := m.refused
	if m.register(values) > 0 {
		m.sc.rebase(build(m.pats, denseBudget))
	}
	return m.refused - before
}

// Write masks p and writes what can be released to the underlying writer;
// bytes that may start a match are held back until later Writes or Close
// decide them. It returns len(p) on success. After an error from the
// underlying writer, every later Write returns that error.
func (m *Writer) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return 0, m.err
	}
	if m.closed {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := m.emit(m.sc.feed(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (m *Writer) emit(out []byte) error {
	if len(out) == 0 {
		return nil
	}
	n, err := m.w.Write(out)
	if err == nil && n < len(out) {
		err = io.ErrShortWrite
	}
	if err != nil {
		m.err = fmt.Errorf("writing masked output: %w", err)
		return m.err
	}
	return nil
}

// Close ends the stream and writes everything held back: a token whose body
// runs to the end of the stream is masked, and so is a trailing prefix of a
// value (of at least MinLength/2 bytes) that the stream ended in the middle
// of. Close does not close the underlying writer. Calling Close again does
// nothing.
func (m *Writer) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return m.err
	}
	m.closed = true
	if m.err != nil {
		return m.err
	}
	return m.emit(m.sc.finish())
}

// Hits returns the number of Replacements written so far: one per masked
// region (overlapping matches count once). It is meant for the audit trail.
func (m *Writer) Hits() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sc.hits
}

// Refused returns the number of values that New and Add turned away for being
// shorter than MinLength.
func (m *Writer) Refused() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.refused
}

// MaskString masks s as a complete stream with the Writer's current values
// and rules (including Close's: a trailing prefix of a value of at least
// MinLength/2 bytes is masked), for error messages and log fields. It does
// not touch the Writer's stream or its Hits, and is safe to call
// concurrently with Write.
func (m *Writer) MaskString(s string) string {
	m.mu.Lock()
	a := m.sc.a
	m.mu.Unlock()
	sc := scanner{a: a}
	out := append([]byte(nil), sc.feed([]byte(s))...)
	out = append(out, sc.finish()...)
	return string(out)
}
