package runner

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
)

// wholeTar reads a tar stream that must end with the archive's end
// marker. archive/tar takes a stream cut at an entry's end for a whole
// archive (its Next returns io.EOF); a copy out of a container that
// stopped short would then lose the files after the cut without a word.
type wholeTar struct {
	r  countingReader
	tr *tar.Reader
}

func newWholeTar(r io.Reader) *wholeTar {
	w := &wholeTar{r: countingReader{r: r}}
	w.tr = tar.NewReader(&w.r)
	return w
}

// Next is tar.Reader.Next; it returns io.EOF only after the end marker
// (a zero block) and io.ErrUnexpectedEOF for a stream that ends without.
func (w *wholeTar) Next() (*tar.Header, error) {
	// The rest of the current entry, so that all Next reads below is
	// its padding (under a block) and what follows.
	if _, err := io.Copy(io.Discard, w.tr); err != nil {
		return nil, err
	}
	before := w.r.n
	hdr, err := w.tr.Next()
	if errors.Is(err, io.EOF) && w.r.n-before < blockSize {
		return nil, fmt.Errorf("the archive ends after %d bytes without its end marker: %w", w.r.n, io.ErrUnexpectedEOF)
	}
	return hdr, err
}

// Read reads the current entry's contents.
func (w *wholeTar) Read(p []byte) (int, error) { return w.tr.Read(p) }

// blockSize is tar's block: headers, padding and the end marker.
const blockSize = 512

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
