// Package stepd is the step server of the Docker executor: a small static
// program that is a job container's idle entrypoint and starts each step
// as its own child, so a step costs a fork and an exec inside the
// container instead of the engine's exec round trips (create, start,
// attach, inspect and a runc exec, ~100 ms).
//
// The host speaks to it over the container's attached stdin and stdout in
// frames (below); the engine carries them, so nothing listens inside the
// container, and the server makes itself non-dumpable, so job code running
// as the same user cannot open its descriptors through /proc to forge a
// frame. A step's environment travels in a frame, never in the container's
// configuration; the container's log driver is "none", so no step output
// is written by the engine either.
package stepd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame kinds. Host to server: Start, Stdin, StdinEOF. Server to host:
// Hello (once, when it is ready), Stdout, Stderr, Exit.
const (
	KindHello    byte = 'H'
	KindStart    byte = 'S'
	KindStdin    byte = 'I'
	KindStdinEOF byte = 'E'
	KindStdout   byte = 'O'
	KindStderr   byte = 'R'
	KindExit     byte = 'X'
)

// MaxPayload bounds one frame's payload; a longer length is corrupt input.
// A Start frame carries the step's whole environment: this is above what
// execve takes (arguments and environment together, a quarter of an 8 MiB
// stack), so the kernel, not the frame, is the limit.
const MaxPayload = 4 << 20

// ChunkSize is the largest piece of a stream either side puts in a frame.
const ChunkSize = 32 << 10

// Version is sent in the Hello frame; the host refuses another.
const Version = "airlock-stepd/1"

// Frame is one message: its kind, the exec it belongs to and its payload.
type Frame struct {
	Kind    byte
	ID      uint32
	Payload []byte
}

const headerLen = 9

// WriteFrame writes f as one write (header and payload together), so
// concurrent writers holding a lock never interleave a frame.
func WriteFrame(w io.Writer, f Frame) error {
	if len(f.Payload) > MaxPayload {
		return fmt.Errorf("stepd: frame of %d bytes exceeds %d", len(f.Payload), MaxPayload)
	}
	b := make([]byte, headerLen+len(f.Payload))
	b[0] = f.Kind
	binary.BigEndian.PutUint32(b[1:5], f.ID)
	binary.BigEndian.PutUint32(b[5:9], uint32(len(f.Payload)))
	copy(b[headerLen:], f.Payload)
	_, err := w.Write(b)
	return err
}

// ReadFrame reads one frame. io.EOF means the stream ended between frames;
// an end inside a frame is io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (Frame, error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(h[5:9])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("stepd: frame %q of %d bytes exceeds %d", h[0], n, MaxPayload)
	}
	f := Frame{Kind: h[0], ID: binary.BigEndian.Uint32(h[1:5]), Payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return f, nil
}

// Start is the payload of a Start frame (JSON).
type Start struct {
	Cmd   []string `json:"cmd"`
	Env   []string `json:"env,omitempty"` // on top of the container's environment
	Dir   string   `json:"dir,omitempty"` // empty: the container's working dir
	Stdin bool     `json:"stdin,omitempty"`
}

// Exit is the payload of an Exit frame (JSON): the step's exit code as the
// engine would report it (128+n for a signal), or the reason it could not
// start (Code is then 126, or 127 for a command not found).
type Exit struct {
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}
