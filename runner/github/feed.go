package github

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/airlock-ci/airlock/internal/logstream"
)

// The live console (§8): masked lines go to the job's FeedStreamUrl over a
// websocket as TimelineRecordFeedLinesWrapper text frames. Each step's
// lines are buffered by a logstream.Streamer (interval, limit, retries)
// whose upload callback sends the complete lines of a chunk as one frame.
// A feed that fails is retried at the next interval and never fails the
// job: the step logs are the record.

const (
	feedInterval = 500 * time.Millisecond
	feedLimit    = 64 << 20
	wsGUID       = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
)

type feedBatch struct {
	StepID    string   `json:"stepId"`
	Value     []string `json:"value"`
	Count     int      `json:"count"`
	StartLine int      `json:"startLine"`
}

// feed sends the lines of the running step to the live console.
type feed struct {
	url, token string
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	tlsConfig  *tls.Config
	ctx        context.Context

	mu     sync.Mutex // guards step and stream
	step   string
	stream *logstream.Streamer

	connMu sync.Mutex // one frame at a time; guards conn
	conn   net.Conn
}

func newFeed(ctx context.Context, u, token string) *feed {
	d := &net.Dialer{Timeout: 10 * time.Second}
	return &feed{url: u, token: token, dial: d.DialContext, ctx: ctx}
}

// add queues one line of step stepID; a new step closes the last one's
// stream (sending what it holds) and opens its own.
func (f *feed) add(stepID, line string) {
	f.mu.Lock()
	var old *logstream.Streamer
	if f.step != stepID || f.stream == nil {
		old = f.stream
		f.step, f.stream = stepID, f.newStream(stepID)
	}
	s := f.stream
	f.mu.Unlock()
	if old != nil {
		f.closeStream(old)
	}
	_, _ = s.Write([]byte(line + "\n"))
}

// newStream buffers one step's lines; its callback sends the complete
// lines of a chunk as one frame (a partial last line waits).
func (f *feed) newStream(stepID string) *logstream.Streamer {
	sent := 0 // lines of the step sent so far; one sender at a time
	s := logstream.New(func(ctx context.Context, off int64, chunk []byte) (int64, error) {
		end := bytes.LastIndexByte(chunk, '\n')
		if end < 0 {
			return off, nil
		}
		lines := strings.Split(string(chunk[:end]), "\n")
		if err := f.send(ctx, feedBatch{StepID: stepID, Value: lines, Count: len(lines), StartLine: sent + 1}); err != nil {
			return off, err
		}
		sent += len(lines)
		return off + int64(end) + 1, nil
	}, logstream.Options{Interval: feedInterval, Limit: feedLimit, Notice: "\n[airlock] live log limit reached\n"})
	s.Start(f.ctx)
	return s
}

// closeStream sends the rest of a step's lines (best effort: the step log
// is the record).
func (f *feed) closeStream(s *logstream.Streamer) {
	ctx, cancel := context.WithTimeout(f.ctx, 10*time.Second)
	defer cancel()
	_ = s.Close(ctx)
}

// stop sends what is left and closes the websocket.
func (f *feed) stop() {
	f.mu.Lock()
	s := f.stream
	f.stream, f.step = nil, ""
	f.mu.Unlock()
	if s != nil {
		f.closeStream(s)
	}
	f.connMu.Lock()
	f.closeConn()
	f.connMu.Unlock()
}

func (f *feed) closeConn() {
	if f.conn != nil {
		_ = f.conn.Close()
		f.conn = nil
	}
}

// send writes one frame, connecting first when needed.
func (f *feed) send(ctx context.Context, b feedBatch) error {
	f.connMu.Lock()
	defer f.connMu.Unlock()
	if f.conn == nil {
		c, err := f.connect(ctx)
		if err != nil {
			return err
		}
		f.conn = c
	}
	payload, _ := json.Marshal(b)
	_ = f.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := writeFrame(f.conn, payload); err != nil {
		f.closeConn()
		return err
	}
	return nil
}

// connect opens the websocket (RFC 6455 client handshake).
func (f *feed) connect(ctx context.Context) (net.Conn, error) {
	u, err := url.Parse(f.url)
	if err != nil {
		return nil, errors.New("live console: bad feed URL")
	}
	host := u.Host
	secure := u.Scheme == "wss" || u.Scheme == "https"
	if u.Port() == "" {
		if secure {
			host += ":443"
		} else {
			host += ":80"
		}
	}
	conn, err := f.dial(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("live console: %w", err)
	}
	if secure {
		cfg := f.tlsConfig
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		cfg = cfg.Clone()
		cfg.ServerName = u.Hostname()
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("live console: %w", err)
		}
		conn = tc
	}
	keyb := make([]byte, 16)
	_, _ = rand.Read(keyb)
	key := base64.StdEncoding.EncodeToString(keyb)
	path := u.RequestURI()
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer " + f.token + "\r\nUser-Agent: " + userAgent + "\r\n\r\n"
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, fmt.Errorf("live console: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodGet})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("live console: %w", err)
	}
	resp.Body.Close()
	sum := sha1.Sum([]byte(key + wsGUID))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		conn.Close()
		return nil, fmt.Errorf("live console: handshake answered HTTP %d", resp.StatusCode)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// writeFrame writes one masked text frame (clients must mask).
func writeFrame(w io.Writer, payload []byte) error {
	hdr := []byte{0x81}
	n := len(payload)
	switch {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126, 0, 0)
		binary.BigEndian.PutUint16(hdr[2:], uint16(n))
	default:
		hdr = append(hdr, 0x80|127, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(hdr[2:], uint64(n))
	}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	hdr = append(hdr, mask...)
	buf := make([]byte, len(hdr)+n)
	copy(buf, hdr)
	for i, b := range payload {
		buf[len(hdr)+i] = b ^ mask[i%4]
	}
	_, err := w.Write(buf)
	return err
}

// feedLine strips the line end and terminal escapes' carriage returns.
func feedLine(line []byte) string {
	return strings.TrimRight(string(line), "\r\n")
}
