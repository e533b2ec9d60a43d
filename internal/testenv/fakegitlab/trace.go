package fakegitlab

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"strings"
)

type ctxKey struct{}

func withRedirected(ctx context.Context) context.Context {
	return context.WithValue(ctx, ctxKey{}, true)
}

const maxChunk = 1 << 20

// jobFor authenticates a job call: 404 unknown job, 403 wrong token, 403
// with Job-Status when the job no longer runs. It returns nil after
// answering.
func (s *Server) jobFor(w http.ResponseWriter, r *http.Request, bodyToken string) *fakeJob {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	j := s.jobs[id]
	if err != nil || j == nil {
		writeJSON(w, http.StatusNotFound, map[string]any{"message": "404 Not Found"})
		return nil
	}
	tok := r.Header.Get("JOB-TOKEN")
	if tok == "" {
		tok = bodyToken
	}
	if tok != j.Token {
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
		return nil
	}
	if j.Status != "running" && j.Status != "canceling" {
		w.Header().Set("Job-Status", j.Status)
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden - Job is not running"})
		return nil
	}
	return j
}

func (s *Server) handleTrace(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobFor(w, r, "")
	if j == nil {
		return
	}
	w.Header().Set("Job-Status", j.Status)
	w.Header().Set("X-GitLab-Trace-Update-Interval", strconv.Itoa(s.traceInterval))
	a, b, ok := strings.Cut(r.Header.Get("Content-Range"), "-")
	start, err1 := strconv.Atoi(a)
	end, err2 := strconv.Atoi(b)
	switch {
	case !ok || err1 != nil || err2 != nil || start < 0 || end < start-1:
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": "invalid Content-Range"})
		return
	case end-start+1 != len(body):
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": "Content-Range does not match the body"})
		return
	case len(body) > maxChunk:
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]any{"message": "chunk too large"})
		return
	case start > len(j.trace):
		w.Header().Set("Range", fmt.Sprintf("0-%d", len(j.trace)))
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	case start+len(body) > s.traceLimit:
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden - Trace size exceeded"})
		return
	}
	// Rails semantics: writing at an offset truncates there.
	j.trace = append(j.trace[:start:start], body...)
	j.MaxChunk = max(j.MaxChunk, len(body))
	w.Header().Set("Range", fmt.Sprintf("0-%d", len(j.trace)))
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token         string `json:"token"`
		State         string `json:"state"`
		FailureReason string `json:"failure_reason"`
		ExitCode      *int   `json:"exit_code"`
		Output        struct {
			Checksum string `json:"checksum"`
			Bytesize int64  `json:"bytesize"`
		} `json:"output"`
	}
	if !decodeBody(r, &in) {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid body"})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobFor(w, r, in.Token)
	if j == nil {
		return
	}
	w.Header().Set("X-GitLab-Trace-Update-Interval", strconv.Itoa(s.traceInterval))
	switch in.State {
	case "running", "pending":
		j.Touches++
		w.Header().Set("Job-Status", j.Status)
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	case "success", "failed":
	default:
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "state is invalid"})
		return
	}
	if j.pending > 0 {
		j.pending--
		w.Header().Set("Job-Status", j.Status)
		writeJSON(w, http.StatusAccepted, map[string]any{})
		return
	}
	if in.Output.Checksum != "" {
		want := fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(j.trace))
		if in.Output.Checksum != want || in.Output.Bytesize != int64(len(j.trace)) {
			w.Header().Set("Job-Status", j.Status)
			writeJSON(w, http.StatusPreconditionFailed, map[string]any{"message": "trace checksum mismatch"})
			return
		}
	}
	j.Reported = in.State
	j.FailureReason = in.FailureReason
	j.ExitCode = in.ExitCode
	j.Checksum = in.Output.Checksum
	j.Bytesize = in.Output.Bytesize
	status := in.State
	if j.Status == "canceling" {
		status = "canceled"
	}
	s.finishLocked(j, status)
	w.Header().Set("Job-Status", status)
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) handleArtifacts(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.redirectArtifacts > 0 && r.Context().Value(ctxKey{}) == nil {
		s.redirectArtifacts--
		s.mu.Unlock()
		w.Header().Set("Location", redirectPrefix+r.URL.RequestURI())
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	j := s.jobFor(w, r, r.URL.Query().Get("token"))
	s.mu.Unlock()
	if j == nil {
		return
	}
	if err := r.ParseMultipartForm(64 << 20); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid multipart body"})
		return
	}
	f, hdr, err := r.FormFile("file")
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "file is missing"})
		return
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "reading file"})
		return
	}
	q := r.URL.Query()
	s.mu.Lock()
	if dup, conflict := sameTypeConflict(j, q.Get("artifact_type"), data); dup || conflict {
		s.mu.Unlock()
		if conflict {
			writeJSON(w, http.StatusBadRequest, map[string]any{"message": "another artifact of the same type already exists"})
			return
		}
		writeJSON(w, http.StatusCreated, map[string]any{"id": j.ID})
		return
	}
	j.artifacts = append(j.artifacts, Artifact{Name: hdr.Filename, Type: q.Get("artifact_type"),
		Format: q.Get("artifact_format"), ExpireIn: q.Get("expire_in"), Data: data})
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"id": j.ID})
}
