package fakegitlab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakegitlab"
)

func post(t *testing.T, s *fakegitlab.Server, method, path string, hdr map[string]string, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// takeJob enqueues a job and takes it with a job request.
func takeJob(t *testing.T, s *fakegitlab.Server) (int64, string) {
	t.Helper()
	s.AddRunner("glrt-x")
	id := s.Enqueue(fakegitlab.JobSpec{})
	resp, err := s.Client().Post(s.URL+"/api/v4/jobs/request", "application/json", strings.NewReader(`{"token":"glrt-x"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var job struct {
		ID    int64  `json:"id"`
		Token string `json:"token"`
	}
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&job) != nil || job.ID != id {
		t.Fatalf("job request = %d, job %d; want 201 with job %d", resp.StatusCode, job.ID, id)
	}
	return id, job.Token
}

func TestTraceProtocol(t *testing.T) {
	s := fakegitlab.New(t)
	id, tok := takeJob(t, s)
	path := fmt.Sprintf("/api/v4/jobs/%d/trace", id)
	tests := []struct {
		name      string
		token     string
		rng       string
		body      string
		wantCode  int
		wantRange string
		wantTrace string
	}{
		{"first chunk", tok, "0-4", "hello", 202, "0-5", "hello"},
		{"append", tok, "5-10", " world", 202, "0-11", "hello world"},
		{"gap", tok, "20-21", "xx", 416, "0-11", "hello world"},
		{"range does not match body", tok, "11-20", "abc", 400, "", "hello world"},
		{"no range", tok, "", "abc", 400, "", "hello world"},
		{"overwrite from an offset truncates", tok, "6-10", "WORLD", 202, "0-11", "hello WORLD"},
		{"wrong job token", "glcbt-wrong", "11-11", "!", 403, "", "hello WORLD"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{"JOB-TOKEN": tc.token, "Content-Type": "text/plain"}
			if tc.rng != "" {
				hdr["Content-Range"] = tc.rng
			}
			resp := post(t, s, "PATCH", path, hdr, tc.body)
			if resp.StatusCode != tc.wantCode || resp.Header.Get("Range") != tc.wantRange {
				t.Errorf("PATCH %s = %d Range %q, want %d Range %q", tc.rng, resp.StatusCode, resp.Header.Get("Range"), tc.wantCode, tc.wantRange)
			}
			if tc.wantCode == 202 && (resp.Header.Get("Job-Status") != "running" || resp.Header.Get("X-GitLab-Trace-Update-Interval") == "") {
				t.Errorf("PATCH headers = %v, want Job-Status running and an update interval", resp.Header)
			}
			if got := string(s.Trace(id)); got != tc.wantTrace {
				t.Errorf("Trace() = %q, want %q", got, tc.wantTrace)
			}
		})
	}
	if resp := post(t, s, "PATCH", "/api/v4/jobs/999999/trace", map[string]string{"JOB-TOKEN": tok, "Content-Range": "0-0"}, "x"); resp.StatusCode != 404 {
		t.Errorf("PATCH unknown job = %d, want 404", resp.StatusCode)
	}
}

func TestFinalUpdateChecksum(t *testing.T) {
	s := fakegitlab.New(t)
	id, tok := takeJob(t, s)
	post(t, s, "PATCH", fmt.Sprintf("/api/v4/jobs/%d/trace", id), map[string]string{"JOB-TOKEN": tok, "Content-Range": "0-1"}, "ok")
	put := func(sum string, size int) int {
		body := fmt.Sprintf(`{"token":%q,"state":"success","output":{"checksum":%q,"bytesize":%d}}`, tok, sum, size)
		return post(t, s, "PUT", fmt.Sprintf("/api/v4/jobs/%d", id), map[string]string{"Content-Type": "application/json"}, body).StatusCode
	}
	if code := put("crc32:00000000", 2); code != 412 {
		t.Errorf("PUT with a wrong checksum = %d, want 412", code)
	}
	if code := put("crc32:79dcdd47", 2); code != 200 {
		t.Errorf("PUT with the right checksum = %d, want 200", code)
	}
	if st := s.Job(id); !st.Finished || st.Status != "success" {
		t.Errorf("job = %+v, want finished success", st)
	}
	if code := put("crc32:79dcdd47", 2); code != 403 {
		t.Errorf("PUT after the final state = %d, want 403", code)
	}
}

func TestJobRequestNeedsJSON(t *testing.T) {
	s := fakegitlab.New(t)
	s.AddRunner("glrt-x")
	if resp := post(t, s, "POST", "/api/v4/jobs/request", map[string]string{"Content-Type": "text/plain"}, `{"token":"glrt-x"}`); resp.StatusCode != 400 {
		t.Errorf("job request without JSON = %d, want 400 (Workhorse)", resp.StatusCode)
	}
	if resp := post(t, s, "POST", "/api/v4/jobs/request", map[string]string{"Content-Type": "application/json"}, `{"token":"glrt-y"}`); resp.StatusCode != 403 {
		t.Errorf("job request with a wrong token = %d, want 403", resp.StatusCode)
	}
}

func TestCloseReleasesLongPoll(t *testing.T) {
	s := fakegitlab.New(t)
	s.AddRunner("glrt-x")
	s.SetLongPoll(time.Hour)
	resp := post(t, s, "POST", "/api/v4/jobs/request", map[string]string{"Content-Type": "application/json"}, `{"token":"glrt-x"}`)
	last := resp.Header.Get("X-GitLab-Last-Update")
	if resp.StatusCode != 204 || last == "" {
		t.Fatalf("first job request = %d, last update %q; want 204 with one", resp.StatusCode, last)
	}
	done := make(chan int, 1)
	go func() {
		body := fmt.Sprintf(`{"token":"glrt-x","last_update":%q}`, last)
		resp, err := s.Client().Post(s.URL+"/api/v4/jobs/request", "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	for len(s.RequestsTo("POST", "/api/v4/jobs/request")) < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go s.Close()
	select {
	case code := <-done:
		if code != 204 {
			t.Errorf("held request after Close = %d, want 204", code)
		}
	case <-ctx.Done():
		t.Fatal("Close did not release the held job request")
	}
}
