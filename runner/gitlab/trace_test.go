package gitlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
)

// startJob enqueues spec and takes the job like the agent does.
func startJob(t *testing.T, fake *fakegitlab.Server, c *Client, spec fakegitlab.JobSpec) *JobResponse {
	t.Helper()
	id := fake.Enqueue(spec)
	j, err := c.RequestJob(testCtx(t), runnerToken, "")
	if err != nil || j == nil || j.ID != id {
		t.Fatalf("RequestJob() = %v, %v; want job %d", j, err, id)
	}
	return j
}

// logLines returns n bytes of recognisable log lines.
func logLines(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %07d: the quick brown fox jumps over the lazy dog\n", i)
	}
	return b.Bytes()[:n]
}

func checkTrace(t *testing.T, fake *fakegitlab.Server, id int64, want []byte) {
	t.Helper()
	got := fake.Trace(id)
	if !bytes.Equal(got, want) {
		t.Fatalf("stored trace: %d bytes, want the %d bytes written (equal=%v)", len(got), len(want), bytes.Equal(got, want))
	}
	st := fake.Job(id)
	if wantSum := fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(want)); st.Checksum != wantSum || st.Bytesize != int64(len(want)) {
		t.Errorf("reported output = %s/%d, want %s/%d", st.Checksum, st.Bytesize, wantSum, len(want))
	}
}

func TestTraceLargeOutput(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	ctx := testCtx(t)
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{Interval: 5 * time.Millisecond, FailureReasons: j.Features.FailureReasons})
	tw.Start(ctx)
	data := logLines(3*1024*1024 + 12345)
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 4096)
		if _, err := tw.Write(rest[:n]); err != nil {
			t.Fatalf("Write() = %v", err)
		}
		rest = rest[n:]
	}
	if err := tw.Finish(ctx, FinalState{State: StateSuccess}); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	checkTrace(t, fake, j.ID, data)
	st := fake.Job(j.ID)
	if st.MaxChunk > 1<<20 || st.Reported != "success" {
		t.Errorf("job = max chunk %d, reported %q; want chunks <= 1 MiB and success", st.MaxChunk, st.Reported)
	}
	patches := fake.RequestsTo("PATCH", fmt.Sprintf("/api/v4/jobs/%d/trace", j.ID))
	if len(patches) < 4 {
		t.Errorf("%d trace PATCHes for %d bytes, want at least 4", len(patches), len(data))
	}
	for _, p := range patches {
		if p.Header.Get("Content-Type") != "text/plain" || p.Header.Get("JOB-TOKEN") != j.Token {
			t.Fatalf("PATCH headers = %v, want text/plain and the job token", p.Header)
		}
	}
	if p := tw.progress(); p.CRC != crc32.ChecksumIEEE(data) || p.Size != int64(len(data)) {
		t.Errorf("progress() = %08x/%d, want %08x/%d", p.CRC, p.Size, crc32.ChecksumIEEE(data), len(data))
	}
	if _, err := tw.Write([]byte("late")); err == nil {
		t.Error("Write() after Finish = nil, want an error")
	}
}

func TestTraceResumesAfter416(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	ctx := testCtx(t)
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{})
	data := logLines(200_000)
	if _, err := tw.Write(data[:150_000]); err != nil {
		t.Fatal(err)
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatalf("Flush() = %v", err)
	}
	fake.TruncateTrace(j.ID, 1000) // GitLab lost data: the next PATCH leaves a gap
	if _, err := tw.Write(data[150_000:]); err != nil {
		t.Fatal(err)
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatalf("Flush() after a gap = %v", err)
	}
	var saw416 bool
	for _, r := range fake.RequestsTo("PATCH", fmt.Sprintf("/api/v4/jobs/%d/trace", j.ID)) {
		if r.Header.Get("Content-Range") == fmt.Sprintf("1000-%d", 1000+len(data)-1000-1) {
			saw416 = true
		}
	}
	if !saw416 {
		t.Error("no PATCH resumed at byte 1000 after the 416")
	}
	if err := tw.Finish(ctx, FinalState{State: StateSuccess}); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	checkTrace(t, fake, j.ID, data)
}

func TestTraceTooLarge(t *testing.T) {
	fake := newRunnerFake(t)
	fake.SetTraceLimit(100_000)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	ctx := testCtx(t)
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{})
	data := logLines(150_000)
	if _, err := tw.Write(data[:60_000]); err != nil {
		t.Fatal(err)
	}
	if err := tw.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data[60_000:]); err != nil {
		t.Fatal(err)
	}
	if err := tw.Flush(ctx); !errors.Is(err, ErrTraceTooLarge) {
		t.Fatalf("Flush() beyond the limit = %v, want ErrTraceTooLarge", err)
	}
	n := len(fake.Requests())
	if err := tw.Flush(ctx); !errors.Is(err, ErrTraceTooLarge) || len(fake.Requests()) != n {
		t.Errorf("Flush() after the refusal = %v and sent %d requests; want ErrTraceTooLarge and nothing sent", err, len(fake.Requests())-n)
	}
	if err := tw.Finish(ctx, FinalState{State: StateSuccess}); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	checkTrace(t, fake, j.ID, data[:60_000])
}

func TestTraceJobStatus(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	ctx := testCtx(t)
	canceled := make(chan struct{}, 10)
	aborted := make(chan string, 10)
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{
		OnCancel: func() { canceled <- struct{}{} },
		OnAbort:  func(s string) { aborted <- s },
	})
	write := func(tw *TraceWriter, s string) {
		if _, err := tw.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	write(tw, "before cancel\n")
	if err := tw.Flush(ctx); err != nil {
		t.Fatalf("Flush() = %v", err)
	}
	fake.Cancel(j.ID)
	for _, s := range []string{"running after_script\n", "more\n"} {
		write(tw, s)
		if err := tw.Flush(ctx); err != nil {
			t.Fatalf("Flush() while canceling = %v", err)
		}
	}
	select {
	case <-canceled:
	case <-ctx.Done():
		t.Fatal("OnCancel was not called after Job-Status canceling")
	}
	if err := tw.Finish(ctx, FinalState{State: StateFailed, FailureReason: ReasonScriptFailure}); err != nil {
		t.Fatalf("Finish() = %v", err)
	}
	if st := fake.Job(j.ID); st.Status != "canceled" {
		t.Errorf("server status = %q, want canceled", st.Status)
	}
	if len(canceled) != 0 || len(aborted) != 0 {
		t.Errorf("extra callbacks: cancel %d, abort %d; want none", len(canceled), len(aborted))
	}

	// A hard cancel: the next trace call is refused with Job-Status canceled.
	j2 := startJob(t, fake, c, fakegitlab.JobSpec{})
	tw2 := c.NewTraceWriter(j2.ID, j2.Token, TraceOptions{OnAbort: func(s string) { aborted <- s }})
	fake.ForceCancel(j2.ID)
	write(tw2, "x")
	if err := tw2.Flush(ctx); !errors.Is(err, ErrJobGone) {
		t.Fatalf("Flush() of a canceled job = %v, want ErrJobGone", err)
	}
	select {
	case s := <-aborted:
		if s != "canceled" {
			t.Errorf("OnAbort(%q), want canceled", s)
		}
	case <-ctx.Done():
		t.Fatal("OnAbort was not called after Job-Status canceled")
	}
	if err := tw2.Finish(ctx, FinalState{State: StateFailed}); !errors.Is(err, ErrJobGone) {
		t.Errorf("Finish() of a canceled job = %v, want ErrJobGone", err)
	}
	if len(aborted) != 0 {
		t.Errorf("OnAbort called %d more times, want once", len(aborted))
	}
}

func TestTraceKeepAlive(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	ctx, cancel := context.WithCancel(testCtx(t))
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{Interval: 5 * time.Millisecond, KeepAlive: 10 * time.Millisecond})
	tw.Start(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for fake.Job(j.ID).Touches == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if fake.Job(j.ID).Touches == 0 {
		t.Fatal("no PUT state=running while the job was silent")
	}
	cancel()
	tw.s.Stop()
	for _, r := range fake.RequestsTo("PUT", fmt.Sprintf("/api/v4/jobs/%d", j.ID)) {
		if !strings.Contains(string(r.Body), `"state":"running"`) {
			t.Errorf("touch body = %s, want state running", r.Body)
		}
	}
}

func TestTraceLimitTruncates(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{Limit: 1000})
	data := logLines(5000)
	for i := 0; i < 5; i++ {
		if n, err := tw.Write(data[i*1000 : (i+1)*1000]); err != nil || n != 1000 {
			t.Fatalf("Write() = %d, %v; want 1000, nil", n, err)
		}
	}
	if err := tw.Finish(testCtx(t), FinalState{State: StateSuccess}); err != nil {
		t.Fatal(err)
	}
	got := fake.Trace(j.ID)
	notice := "\n\x1b[33;1mJob's log exceeded limit of 1000 bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n"
	if !bytes.HasPrefix(got, data[:1000]) || string(got[1000:]) != notice {
		t.Errorf("trace = %q..., want the first 1000 bytes and GitLab's notice", got[min(len(got), 990):])
	}
	// The final update's checksum covers exactly the kept bytes.
	if st := fake.Job(j.ID); st.Checksum != fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(got)) || st.Bytesize != int64(len(got)) {
		t.Errorf("final checksum %s size %d, want crc32 of the %d kept bytes", st.Checksum, st.Bytesize, len(got))
	}
}

func TestTraceLimitNeverSplitsUTF8(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{Limit: 10})
	tw.Write([]byte("abcdefghi\u00e9tail")) // é straddles byte 10
	if err := tw.Finish(testCtx(t), FinalState{State: StateSuccess}); err != nil {
		t.Fatal(err)
	}
	if got := fake.Trace(j.ID); !bytes.HasPrefix(got, []byte("abcdefghi\n")) {
		t.Errorf("trace = %q, want the cut before the two-byte rune", got)
	}
}

// A crashed run's trace whose journal lagged behind its last send: GitLab
// holds more than Resume says. The resumed writer continues after GitLab's
// copy (it used to fail, and the fallback rewrote the whole log with the
// error alone) and reports the end without a checksum it cannot know; its
// progress says so, for a second crash.
func TestTraceResumeAfterALaggingJournal(t *testing.T) {
	fake := newRunnerFake(t)
	c, _ := newTestClient(t, fake)
	j := startJob(t, fake, c, fakegitlab.JobSpec{})
	ctx := testCtx(t)
	before := []byte("started\nmore output the journal never recorded\n")
	first := c.NewTraceWriter(j.ID, j.Token, TraceOptions{})
	if _, err := first.Write(before); err != nil {
		t.Fatal(err)
	}
	if err := first.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	journaled := TraceProgress{Size: 8, CRC: crc32.ChecksumIEEE(before[:8])} // "started\n" only

	var last TraceProgress
	tw := c.NewTraceWriter(j.ID, j.Token, TraceOptions{Resume: journaled, Resumed: true, OnProgress: func(p TraceProgress) { last = p }})
	msg := []byte("ERROR: Job failed (system failure): the runner stopped\n")
	if _, err := tw.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := tw.Finish(ctx, FinalState{State: StateFailed, FailureReason: ReasonRunnerSystemFailure}); err != nil {
		t.Fatalf("Finish() of the resumed trace = %v", err)
	}
	if got, want := fake.Trace(j.ID), append(append([]byte(nil), before...), msg...); !bytes.Equal(got, want) {
		t.Errorf("trace = %q, want %q", got, want)
	}
	if st := fake.Job(j.ID); st.Reported != "failed" || st.Checksum != "" {
		t.Errorf("final report = %q with checksum %q, want failed without one", st.Reported, st.Checksum)
	}
	if !last.Unverified || last.Size != int64(len(before)+len(msg)) {
		t.Errorf("progress = %+v, want size %d, unverified", last, len(before)+len(msg))
	}

	// A journal that did not lag: the resumed trace continues where it
	// says, and the end is reported with the checksum of the whole log.
	j2 := startJob(t, fake, c, fakegitlab.JobSpec{})
	w := c.NewTraceWriter(j2.ID, j2.Token, TraceOptions{})
	w.Write(before)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	exact := TraceProgress{Size: int64(len(before)), CRC: crc32.ChecksumIEEE(before)}
	w2 := c.NewTraceWriter(j2.ID, j2.Token, TraceOptions{Resume: exact, Resumed: true})
	w2.Write(msg)
	if err := w2.Finish(ctx, FinalState{State: StateFailed, FailureReason: ReasonRunnerSystemFailure}); err != nil {
		t.Fatalf("Finish() of a resumed trace whose journal is exact = %v", err)
	}
	checkTrace(t, fake, j2.ID, append(append([]byte(nil), before...), msg...))
}
