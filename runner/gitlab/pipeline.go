package gitlab

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/backoff"
	"github.com/airlock-ci/airlock/runner/job"
)

// Failure reasons of the pipeline stages, from GitLab's set.
const (
	// ReasonMissingDependency: a dependency's artifacts cannot be had
	// (401/403/404 on download).
	ReasonMissingDependency FailureReason = "missing_dependency_failure"
	// ReasonDataIntegrity: a dependency's archive is corrupt or holds an
	// entry outside the project directory.
	ReasonDataIntegrity FailureReason = "data_integrity_failure"
	// ReasonAPIFailure: GitLab kept failing the download (5xx, transport).
	ReasonAPIFailure FailureReason = "api_failure"
)

// AuditEntry is where the sealed audit trail sits in the job's archive
// artifact (or in the trail-only archive of a job that uploads none).
const AuditEntry = ".airlock/audit.jsonl"

// CacheStore is where job caches live: runner/cache's host-local store;
// a distributed store (S3) would implement the same.
type CacheStore interface {
	// Open returns an entry's archive, fs.ErrNotExist when there is none.
	Open(project, key string, protected bool) (*os.File, error)
	// ModTime is when the entry was written (zero: none).
	ModTime(project, key string, protected bool) time.Time
	// Save replaces an entry's archive with what write produces.
	Save(project, key string, protected bool, write func(w io.Writer) error) error
}

// Fetch copies the project-relative path rel ("." for all of it) of the
// job's working directory into the host directory dst, at dst/rel. A
// missing rel gives an error wrapping fs.ErrNotExist.
type Fetch = func(ctx context.Context, rel, dst string) error

// PipelineOptions configure a Pipeline.
type PipelineOptions struct {
	// ProjectDir is CI_PROJECT_DIR in the job container.
	ProjectDir string
	// Cache holds caches; nil skips every cache: entry with a warning.
	Cache CacheStore
	// TempDir holds staging copies and archives (default os.TempDir()).
	TempDir string
	Log     hclog.Logger
}

// Pipeline carries out the GitLab stages around a job's script that
// handle files: restore_cache and download_artifacts before it (into the
// host directory the workspace is made in), archive_cache and the
// artifact uploads after it (from a staging copy of the workspace), with
// GitLab's rules (research §2–§5). One per job; not safe for concurrent
// use.
type Pipeline struct {
	c    *Client
	resp *JobResponse
	o    PipelineOptions
	vars map[string]string

	tracked map[string]bool
	tmp     string
	staged  []staged
}

type staged struct {
	file     string
	name     string
	opts     ArtifactOptions
	archive  bool
	describe string
}

// NewPipeline returns the pipeline stages of job resp, talking to GitLab
// through c.
func NewPipeline(c *Client, resp *JobResponse, o PipelineOptions) *Pipeline {
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	vars := map[string]string{"CI_PROJECT_DIR": o.ProjectDir}
	for _, v := range resp.Variables {
		vars[v.Key] = v.Value
	}
	return &Pipeline{c: c, resp: resp, o: o, vars: vars}
}

// Needed reports whether the job uses any stage of the pipeline.
func (p *Pipeline) Needed() bool {
	return len(p.resp.Artifacts) > 0 || len(p.resp.Cache) > 0 || len(p.dependencies()) > 0
}

func (p *Pipeline) expand(s string) string {
	return os.Expand(s, func(k string) string { return p.vars[k] })
}

// sleep waits for d or until ctx ends (the client's, replaced in tests).
func (p *Pipeline) sleep(ctx context.Context, d time.Duration) error {
	if p.c != nil && p.c.sleep != nil {
		return p.c.sleep(ctx, d)
	}
	return backoff.Sleep(ctx, d)
}

func (p *Pipeline) tempDir() (string, error) {
	if p.tmp == "" {
		d, err := os.MkdirTemp(p.o.TempDir, "airlock-pipeline-")
		if err != nil {
			return "", err
		}
		p.tmp = d
	}
	return p.tmp, nil
}

// Close removes the pipeline's temporary files.
func (p *Pipeline) Close() error {
	if p.tmp == "" {
		return nil
	}
	return os.RemoveAll(p.tmp)
}

// Workspace returns the function that fills the job's workspace on the
// host: checkout (nil: none, GIT_STRATEGY none), then the caches, then
// the dependencies' artifacts. A failed download fails the job with a
// *job.ReasonError; cache failures only warn.
func (p *Pipeline) Workspace(checkout func(ctx context.Context, dir string, out io.Writer) error) func(ctx context.Context, dir string, out io.Writer) error {
	if checkout == nil && len(p.resp.Cache) == 0 && len(p.dependencies()) == 0 {
		return nil
	}
	return func(ctx context.Context, dir string, out io.Writer) error {
		if checkout != nil {
			if err := checkout(ctx, dir, out); err != nil {
				return err
			}
			p.tracked = trackedFiles(dir)
		}
		p.restoreCaches(ctx, dir, out)
		return p.downloadDependencies(ctx, dir, out)
	}
}

// trackedFiles lists what the checkout made (every non-directory outside
// .git): the rest of the workspace is "untracked" to artifacts and caches.
func trackedFiles(dir string) map[string]bool {
	set := map[string]bool{}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, rerr := filepath.Rel(dir, p)
		if rerr != nil || rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".git" {
				return fs.SkipDir
			}
			return nil
		}
		set[rel] = true
		return nil
	})
	return set
}

func (p *Pipeline) dependencies() []JobDependency {
	var out []JobDependency
	for _, d := range p.resp.Dependencies {
		if d.ArtifactsFile.Filename != "" {
			out = append(out, d)
		}
	}
	return out
}

func (p *Pipeline) downloadDependencies(ctx context.Context, dir string, out io.Writer) error {
	for _, d := range p.dependencies() {
		fmt.Fprintf(out, "Downloading artifacts for %s (%d)...\n", d.Name, d.ID)
		if err := p.downloadOne(ctx, d, dir, out); err != nil {
			fmt.Fprintf(out, "\x1b[31;1mERROR: Downloading artifacts from coordinator... %v\x1b[0;m\n", err)
			return err
		}
		fmt.Fprintf(out, "Downloading artifacts from coordinator... ok        id=%d\n", d.ID)
	}
	return nil
}

func (p *Pipeline) downloadOne(ctx context.Context, d JobDependency, dir string, out io.Writer) error {
	tmp, err := p.tempDir()
	if err != nil {
		return fmt.Errorf("downloading artifacts of %s: %w", d.Name, err)
	}
	f, err := os.CreateTemp(tmp, "dependency-*.zip")
	if err != nil {
		return fmt.Errorf("downloading artifacts of %s: %w", d.Name, err)
	}
	defer func() { f.Close(); os.Remove(f.Name()) }()
	// GitLab sends the running job's token as dep.token; fall back to it.
	token := d.Token
	if token == "" {
		token = p.resp.Token
	}
	if err := p.c.DownloadArtifacts(ctx, d.ID, token, p.resp.attempts("ARTIFACT_DOWNLOAD_ATTEMPTS", defaultDownloadAttempts), f, out); err != nil {
		reason := ReasonAPIFailure
		if errors.Is(err, ErrArtifactUnavailable) {
			reason = ReasonMissingDependency
		}
		return &job.ReasonError{Reason: job.FailureReason(reason), Err: err}
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("downloading artifacts of %s: %w", d.Name, err)
	}
	zr, err := zip.NewReader(f, size)
	if err == nil {
		err = ExtractZip(zr, dir, nil)
	}
	if err != nil {
		return &job.ReasonError{Reason: job.FailureReason(ReasonDataIntegrity),
			Err: fmt.Errorf("extracting artifacts of %s (%d): %w", d.Name, d.ID, err)}
	}
	return nil
}

// whenFits reports whether an entry with when w runs after a job that
// ended in state.
func whenFits(w string, state job.State) bool {
	switch w {
	case "always":
		return true
	case "on_failure":
		return state != job.Success
	default: // on_success and ""
		return state == job.Success
	}
}
