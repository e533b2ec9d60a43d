package fakegithub

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// FeedLine is a line the live console received.
type FeedLine struct {
	StepID string
	Line   int
	Text   string
}

// feed is the live console's websocket (FeedStreamUrl): it accepts the
// job token, reads masked client text frames of
// TimelineRecordFeedLinesWrapper JSON and records the lines.
func (f *Runners) feed(w http.ResponseWriter, r *http.Request) {
	j := f.jobOf(w, r)
	if j == nil {
		return
	}
	if r.PathValue("job") != j.ID {
		http.Error(w, "wrong job", http.StatusNotFound)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" || r.Header.Get("Sec-WebSocket-Version") != "13" {
		f.violation("live console: not a websocket handshake")
		http.Error(w, "websocket required", http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
	_ = rw.Flush()
	for {
		payload, op, err := readFrame(rw.Reader)
		if err != nil || op == 8 {
			return
		}
		if op != 1 {
			continue
		}
		var b struct {
			StepID    string   `json:"stepId"`
			Value     []string `json:"value"`
			Count     int      `json:"count"`
			StartLine int      `json:"startLine"`
		}
		if err := json.Unmarshal(payload, &b); err != nil || b.StepID == "" || b.Count != len(b.Value) {
			f.violation("live console: bad frame %q", payload)
			continue
		}
		f.mu.Lock()
		f.received = append(f.received, "FEED "+string(payload))
		for i, v := range b.Value {
			j.FeedLines = append(j.FeedLines, FeedLine{StepID: b.StepID, Line: b.StartLine + i, Text: v})
		}
		f.mu.Unlock()
	}
}

func readFrame(r *bufio.Reader) ([]byte, byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, 0, err
	}
	op := h[0] & 0x0f
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, 0, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, 0, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if h[1]&0x80 == 0 || n > 16<<20 {
		return nil, 0, io.ErrUnexpectedEOF // clients must mask
	}
	var mask [4]byte
	if _, err := io.ReadFull(r, mask[:]); err != nil {
		return nil, 0, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, 0, err
	}
	for i := range p {
		p[i] ^= mask[i%4]
	}
	return p, op, nil
}
