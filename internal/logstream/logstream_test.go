package logstream

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// sink is a coordinator that holds a log and records every upload.
type sink struct {
	mu      sync.Mutex
	held    []byte
	chunks  []int
	offsets []int64
	// answer, if set, decides what the sink says instead of accepting.
	answer func(off int64, chunk []byte) (int64, error)
}

func (k *sink) upload(_ context.Context, off int64, chunk []byte) (int64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.chunks = append(k.chunks, len(chunk))
	k.offsets = append(k.offsets, off)
	if k.answer != nil {
		return k.answer(off, chunk)
	}
	if off != int64(len(k.held)) {
		return int64(len(k.held)), nil // resume from what is held
	}
	k.held = append(k.held, chunk...)
	return int64(len(k.held)), nil
}

func (k *sink) log() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return string(k.held)
}

func TestFlushSendsChunksInOrder(t *testing.T) {
	k := &sink{}
	s := New(k.upload, Options{MaxChunk: 10})
	want := strings.Repeat("0123456789abcdef", 5)
	if _, err := s.Write([]byte(want)); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("Flush() = %v", err)
	}
	if got := k.log(); got != want {
		t.Errorf("coordinator holds %q, want %q", got, want)
	}
	for i, n := range k.chunks {
		if n > 10 {
			t.Errorf("chunk %d has %d bytes, want at most 10", i, n)
		}
	}
	if off, acked := s.Acked(); off != int64(len(want)) || string(acked) != want {
		t.Errorf("Acked() = %d, %q; want %d, %q", off, acked, len(want), want)
	}
}

func TestLimitAddsNoticeOnce(t *testing.T) {
	k := &sink{}
	s := New(k.upload, Options{Limit: 20, Notice: "[cut at %d]"})
	s.Write([]byte("0123456789"))
	s.Write([]byte("0123456789abcdef"))
	s.Write([]byte("more"))
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if got, want := k.log(), "01234567890123456789[cut at 20]"; got != want {
		t.Errorf("coordinator holds %q, want %q", got, want)
	}
	if _, err := s.Write([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
}

func TestResumeFromCoordinatorOffset(t *testing.T) {
	// The coordinator lost the tail of what it acknowledged (GitLab's 416
	// with a shorter Range): the streamer resends from there.
	k := &sink{}
	s := New(k.upload, Options{})
	s.Write([]byte("hello "))
	s.Flush(context.Background())
	k.mu.Lock()
	k.held = k.held[:2]
	k.mu.Unlock()
	s.Write([]byte("world"))
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("Flush() = %v", err)
	}
	if got := k.log(); got != "hello world" {
		t.Errorf("coordinator holds %q, want %q", got, "hello world")
	}
}

func TestRewindResendsFromOffset(t *testing.T) {
	k := &sink{}
	s := New(k.upload, Options{})
	s.Write([]byte("abcdef"))
	s.Flush(context.Background())
	k.mu.Lock()
	k.held = nil
	k.mu.Unlock()
	s.Rewind(0)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("Flush() = %v", err)
	}
	if got := k.log(); got != "abcdef" {
		t.Errorf("coordinator holds %q after Rewind(0), want %q", got, "abcdef")
	}
}

func TestPermanentStopsUploads(t *testing.T) {
	gone := errors.New("job is gone")
	k := &sink{answer: func(int64, []byte) (int64, error) { return 0, Permanent(gone) }}
	s := New(k.upload, Options{})
	s.Write([]byte("x"))
	for i := 0; i < 3; i++ {
		if err := s.Flush(context.Background()); !errors.Is(err, gone) || !IsPermanent(err) {
			t.Fatalf("Flush() = %v, want the permanent error", err)
		}
	}
	if len(k.chunks) != 1 {
		t.Errorf("%d uploads after a permanent error, want 1", len(k.chunks))
	}
	k.answer = nil
	s.Rewind(0)
	if err := s.Flush(context.Background()); err != nil {
		t.Errorf("Flush after Rewind = %v, want nil", err)
	}
}

func TestNoProgressIsBounded(t *testing.T) {
	k := &sink{answer: func(off int64, _ []byte) (int64, error) { return off, nil }}
	s := New(k.upload, Options{})
	s.Write([]byte("stuck"))
	if err := s.Flush(context.Background()); err == nil {
		t.Fatal("Flush() = nil with a coordinator that never takes anything")
	}
	if len(k.chunks) != maxNoProgress {
		t.Errorf("%d uploads, want %d", len(k.chunks), maxNoProgress)
	}
}

func TestClaimBeyondWrittenIsAnError(t *testing.T) {
	k := &sink{answer: func(off int64, c []byte) (int64, error) { return off + int64(len(c)) + 1, nil }}
	s := New(k.upload, Options{})
	s.Write([]byte("abc"))
	if err := s.Flush(context.Background()); err == nil {
		t.Error("Flush() = nil although the coordinator claims more than was sent")
	}
}

func TestBaseContinuesEarlierLog(t *testing.T) {
	k := &sink{held: []byte("earlier log\n")}
	var acks []int64
	s := New(k.upload, Options{Base: 12, OnAck: func(off int64) { acks = append(acks, off) }})
	s.Write([]byte("crash notice\n"))
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("Flush() = %v", err)
	}
	if got, want := k.log(), "earlier log\ncrash notice\n"; got != want {
		t.Errorf("coordinator holds %q, want %q", got, want)
	}
	if k.offsets[0] != 12 {
		t.Errorf("first upload at offset %d, want 12", k.offsets[0])
	}
	if off, acked := s.Acked(); off != 25 || string(acked) != "crash notice\n" {
		t.Errorf("Acked() = %d, %q", off, acked)
	}
	if len(acks) != 1 || acks[0] != 25 {
		t.Errorf("OnAck saw %v, want [25]", acks)
	}
}

func TestBackgroundLoopSendsAndKeepsAlive(t *testing.T) {
	k := &sink{}
	idle := make(chan struct{}, 1)
	s := New(k.upload, Options{Interval: 5 * time.Millisecond, KeepAlive: 20 * time.Millisecond,
		OnIdle: func(context.Context) error {
			select {
			case idle <- struct{}{}:
			default:
			}
			return nil
		}})
	s.Start(context.Background())
	s.Write([]byte("streamed"))
	deadline := time.Now().Add(time.Minute)
	for k.log() != "streamed" {
		if time.Now().After(deadline) {
			t.Fatal("the background loop never sent the log")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-idle:
	case <-time.After(time.Minute):
		t.Fatal("OnIdle never called while the log was quiet")
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if !bytes.Equal([]byte(k.log()), []byte("streamed")) {
		t.Errorf("coordinator holds %q", k.log())
	}
}
