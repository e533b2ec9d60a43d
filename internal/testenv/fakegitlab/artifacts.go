package fakegitlab

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
)

// ObjectStorageHost is the host name the fake's object storage answers
// on (through Client's dialer, never DNS): another host than GitLab's, so
// tests can check what a redirect to object storage carries.
const ObjectStorageHost = "objects.fake-gitlab.test"

// ArtifactSpec is an artifacts: entry of a JobSpec's payload (GitLab's
// job_request artifacts entity).
type ArtifactSpec struct {
	Name      string   `json:"name,omitempty"`
	Untracked bool     `json:"untracked,omitempty"`
	Paths     []string `json:"paths"`
	Exclude   []string `json:"exclude,omitempty"`
	When      string   `json:"when,omitempty"`
	ExpireIn  string   `json:"expire_in,omitempty"`
	Type      string   `json:"artifact_type"`
	Format    string   `json:"artifact_format"`
}

// CacheSpec is a cache: entry of a JobSpec's payload.
type CacheSpec struct {
	Key          string   `json:"key"`
	Untracked    bool     `json:"untracked,omitempty"`
	Policy       string   `json:"policy,omitempty"`
	Paths        []string `json:"paths"`
	When         string   `json:"when,omitempty"`
	FallbackKeys []string `json:"fallback_keys,omitempty"`
}

// ServiceSpec is a services: entry of a JobSpec's payload.
type ServiceSpec struct {
	Name       string           `json:"name"`
	Alias      string           `json:"alias,omitempty"`
	Command    []string         `json:"command,omitempty"`
	Entrypoint []string         `json:"entrypoint,omitempty"`
	Variables  []map[string]any `json:"variables,omitempty"`
}

// DependencySpec is a dependencies: entry of a JobSpec's payload: an
// earlier job whose archive artifact the job downloads.
type DependencySpec struct {
	ID   JobID
	Name string
}

// objectStore is the fake's object storage: a second server that serves
// presigned URLs of stored archives and records every request.
type objectStore struct {
	srv *httptest.Server

	mu       sync.Mutex
	objects  map[string][]byte
	requests []Request
}

func newObjectStore() *objectStore {
	o := &objectStore{objects: map[string][]byte{}}
	o.srv = httptest.NewServer(http.HandlerFunc(o.serve))
	return o
}

func (o *objectStore) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.requests = append(o.requests, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone()})
	data, ok := o.objects[r.URL.Path]
	o.mu.Unlock()
	if !ok || r.URL.Query().Get("X-Amz-Signature") == "" {
		http.Error(w, "AccessDenied", http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "application/zip")
	_, _ = w.Write(data)
}

// dialContext routes ObjectStorageHost to the object store and everything
// else to the address asked for (the fake's loopback listeners).
func (o *objectStore) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err == nil && host == ObjectStorageHost {
		addr = o.srv.Listener.Addr().String()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// ObjectStorageRequests returns the requests the object storage received.
func (s *Server) ObjectStorageRequests() []Request {
	s.objects.mu.Lock()
	defer s.objects.mu.Unlock()
	return append([]Request(nil), s.objects.requests...)
}

// SetObjectStorage makes artifact downloads asked for with
// direct_download=true answer 302 to a presigned URL on
// ObjectStorageHost, as GitLab does with object storage.
func (s *Server) SetObjectStorage(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objectStorage = on
}

// SetArtifact stores data as job id's archive artifact, as if it had
// uploaded it (for download tests).
func (s *Server) SetArtifact(id JobID, a Artifact) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[id]; j != nil {
		j.artifacts = append(j.artifacts, a)
	}
}

// AddJob creates a finished job (no payload is handed out) to be a
// dependency of others; it returns its id.
func (s *Server) AddJob(name string) JobID {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	id := s.nextID
	j := &fakeJob{JobState: JobState{ID: id, Token: randomToken("glcbt-64_"), Status: "success", Finished: true}, finished: make(chan struct{})}
	close(j.finished)
	s.jobs[id] = j
	return id
}

// sameTypeConflict answers GitLab's "one artifact per type per job": the
// same content again is an idempotent 201, other content a 400.
func sameTypeConflict(j *fakeJob, typ string, data []byte) (dup, conflict bool) {
	if typ == "" {
		typ = "archive"
	}
	for _, a := range j.artifacts {
		t := a.Type
		if t == "" {
			t = "archive"
		}
		if t == typ {
			if sha256.Sum256(a.Data) == sha256.Sum256(data) {
				return true, false
			}
			return false, true
		}
	}
	return false, false
}

// handleDownload serves GET /api/v4/jobs/:id/artifacts (research §4): the
// JOB-TOKEN must be a running job's (401), the job must exist (403) and
// have an archive (404); with object storage on and direct_download=true
// the answer is a 302 to a presigned URL on ObjectStorageHost.
func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get("JOB-TOKEN")
	if tok == "" {
		tok = r.URL.Query().Get("job_token")
	}
	s.mu.Lock()
	authorized := false
	for _, j := range s.jobs {
		if tok != "" && j.Token == tok && (j.Status == "running" || j.Status == "canceling") {
			authorized = true
			break
		}
	}
	if !authorized {
		s.mu.Unlock()
		writeJSON(w, http.StatusUnauthorized, map[string]any{"message": "401 Unauthorized"})
		return
	}
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	j := s.jobs[id]
	if j == nil {
		s.mu.Unlock()
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "403 Forbidden"})
		return
	}
	var data []byte
	found := false
	for _, a := range j.artifacts {
		if a.Type == "" || a.Type == "archive" {
			data, found = a.Data, true
			break
		}
	}
	direct := s.objectStorage && r.URL.Query().Get("direct_download") == "true"
	s.mu.Unlock()
	if !found {
		writeJSON(w, http.StatusNotFound, map[string]any{"message": "404 Not Found"})
		return
	}
	if direct {
		key := fmt.Sprintf("/artifacts/%d/artifacts.zip", id)
		s.objects.mu.Lock()
		s.objects.objects[key] = data
		s.objects.mu.Unlock()
		_, port, _ := net.SplitHostPort(s.objects.srv.Listener.Addr().String())
		loc := fmt.Sprintf("http://%s:%s%s?X-Amz-Expires=60&X-Amz-Signature=%s", ObjectStorageHost, port, key, strings.Repeat("ab", 16))
		http.Redirect(w, r, loc, http.StatusFound)
		return
	}
	w.Header().Set("Content-Type", "application/zip")
	_, _ = w.Write(data)
}

// ArtifactUploads counts the upload requests for job id (including
// refused and redirected ones).
func (s *Server) ArtifactUploads(id JobID) int {
	n := 0
	p := fmt.Sprintf("/api/v4/jobs/%d/artifacts", id)
	for _, r := range s.Requests() {
		if r.Method == http.MethodPost && strings.TrimPrefix(r.Path, redirectPrefix) == p {
			n++
		}
	}
	return n
}
