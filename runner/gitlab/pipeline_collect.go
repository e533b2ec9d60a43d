package gitlab

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/airlock-ci/airlock/runner/job"
)

// reportFormats is GitLab's fixed format per report type (research §1).
var reportFormats = map[string]string{
	"archive": "zip", "lsif": "zip",
	"junit": "gzip", "dotenv": "gzip", "metrics": "gzip", "cobertura": "gzip", "jacoco": "gzip",
	"cyclonedx": "gzip", "annotations": "gzip", "repository_xray": "gzip",
	"sast": "raw", "secret_detection": "raw", "dependency_scanning": "raw", "container_scanning": "raw",
	"cluster_image_scanning": "raw", "dast": "raw", "license_scanning": "raw", "accessibility": "raw",
	"codequality": "raw", "performance": "raw", "browser_performance": "raw", "load_performance": "raw",
	"terraform": "raw", "requirements": "raw", "requirements_v2": "raw", "coverage_fuzzing": "raw",
	"api_fuzzing": "raw",
}

// checkPipeline returns what Airlock cannot do of the payload's
// artifacts: and cache: entries, naming the keyword.
func (r *JobResponse) checkPipeline() []error {
	var errs []error
	for i, a := range r.Artifacts {
		t := a.ArtifactType
		if t == "" {
			t = "archive"
		}
		want, ok := reportFormats[t]
		if !ok {
			errs = append(errs, fmt.Errorf("artifacts[%d]: artifacts:reports:%s is not supported by Airlock", i, truncate(t)))
			continue
		}
		if f := a.ArtifactFormat; f != "" && f != want {
			errs = append(errs, fmt.Errorf("artifacts[%d] (%s): artifact_format %q is not supported by Airlock (want %s)", i, t, truncate(f), want))
		}
		switch a.When {
		case "", "on_success", "on_failure", "always":
		default:
			errs = append(errs, fmt.Errorf("artifacts[%d]: artifacts:when %q is not supported", i, truncate(a.When)))
		}
	}
	for i, c := range r.Cache {
		switch c.When {
		case "", "on_success", "on_failure", "always":
		default:
			errs = append(errs, fmt.Errorf("cache[%d]: cache:when %q is not supported", i, truncate(c.When)))
		}
	}
	return errs
}

func artifactFormat(a JobArtifact) (typ, format string) {
	typ = a.ArtifactType
	if typ == "" {
		typ = "archive"
	}
	format = a.ArtifactFormat
	if format == "" {
		format = reportFormats[typ]
	}
	return typ, format
}

// artifactFileName is gitlab-runner's: base name of the expanded name
// (default "artifacts") plus the format's extension.
func (p *Pipeline) artifactFileName(a JobArtifact, format string) string {
	name := path.Base(p.expand(a.Name))
	if name == "" || name == "." || name == "/" {
		name = "artifacts"
	}
	switch format {
	case "zip":
		return name + ".zip"
	case "gzip":
		return name + ".gz"
	}
	return name
}

// Collect runs after the job's last step while its container exists:
// it copies what the artifacts and caches due for state name from the
// workspace (through fetch) to a staging directory on the host, saves the
// caches (failures warn) and builds the artifact files to upload later
// with Upload, once the audit trail is sealed. An error means an artifact
// could not be built: it fails an otherwise successful job.
func (p *Pipeline) Collect(ctx context.Context, state job.State, fetch Fetch, out io.Writer) error {
	var arts []JobArtifact
	for _, a := range p.resp.Artifacts {
		if whenFits(a.When, state) {
			arts = append(arts, a)
		}
	}
	var caches []JobCache
	for _, c := range p.cachesFor(true) {
		if whenFits(c.When, state) {
			caches = append(caches, c)
		}
	}
	if len(arts) == 0 && len(caches) == 0 {
		return nil
	}
	var patterns []string
	for _, a := range arts {
		for _, x := range a.Paths {
			patterns = append(patterns, p.expand(x))
		}
		if a.Untracked {
			patterns = append(patterns, ".")
		}
	}
	for _, c := range caches {
		for _, x := range c.Paths {
			patterns = append(patterns, p.expand(x))
		}
		if c.Untracked {
			patterns = append(patterns, ".")
		}
	}
	tmp, err := p.tempDir()
	if err != nil {
		return fmt.Errorf("collecting artifacts: %w", err)
	}
	stage, err := os.MkdirTemp(tmp, "workspace-")
	if err != nil {
		return fmt.Errorf("collecting artifacts: %w", err)
	}
	defer os.RemoveAll(stage)
	for _, pre := range LiteralPrefixes(p.o.ProjectDir, patterns) {
		if err := fetch(ctx, pre, stage); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("copying %s from the job: %w", pre, err)
		}
	}
	root, err := os.OpenRoot(stage)
	if err != nil {
		return fmt.Errorf("collecting artifacts: %w", err)
	}
	defer root.Close()
	sel := &Selector{Root: root, ProjectDir: p.o.ProjectDir, Tracked: p.tracked,
		Warn: func(format string, a ...any) { fmt.Fprintf(out, "\x1b[0;33mWARNING: "+format+"\x1b[0;m\n", a...) }}

	p.archiveCaches(caches, sel, root, out)

	var errs []error
	for _, a := range arts {
		if err := p.stageArtifact(a, sel, root, out); err != nil {
			fmt.Fprintf(out, "\x1b[31;1mERROR: %v\x1b[0;m\n", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Pipeline) stageArtifact(a JobArtifact, sel *Selector, root *os.Root, out io.Writer) error {
	typ, format := artifactFormat(a)
	paths := make([]string, len(a.Paths))
	for i, x := range a.Paths {
		paths[i] = p.expand(x)
	}
	excl := make([]string, len(a.Exclude))
	for i, x := range a.Exclude {
		excl[i] = p.expand(x)
	}
	entries, err := sel.Select(Selection{Paths: paths, Exclude: excl, Untracked: a.Untracked})
	if err != nil {
		return fmt.Errorf("archiving %s artifacts: %w", typ, err)
	}
	if len(entries) == 0 {
		fmt.Fprintf(out, "\x1b[0;33mWARNING: No files to upload (%s)\x1b[0;m\n", typ)
		return nil
	}
	f, err := os.CreateTemp(p.tmp, "artifact-*")
	if err != nil {
		return fmt.Errorf("archiving %s artifacts: %w", typ, err)
	}
	switch format {
	case "zip":
		err = WriteZipLevel(f, root, entries, CompressionLevel(p.vars["ARTIFACT_COMPRESSION_LEVEL"]))
	case "gzip":
		_, err = WriteGzip(f, root, entries)
	case "raw":
		err = WriteRaw(f, root, entries)
	default:
		err = fmt.Errorf("artifact_format %q is not supported", format)
	}
	err = errors.Join(err, f.Close())
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("archiving %s artifacts: %w", typ, err)
	}
	fmt.Fprintf(out, "%s: found %d matching artifact files and directories\n", typ, len(entries))
	p.staged = append(p.staged, staged{
		file: f.Name(), name: p.artifactFileName(a, format), archive: typ == "archive",
		opts:     ArtifactOptions{Type: typ, Format: format, ExpireIn: a.ExpireIn},
		describe: typ,
	})
	return nil
}

// Staged reports how many artifacts wait for Upload.
func (p *Pipeline) Staged() int { return len(p.staged) }

// Upload uploads the artifacts Collect built, in payload order, before
// the job's final update. The sealed audit trail (trail, "" for none) is
// added to the job's archive as AuditEntry, or uploaded alone as
// AuditArtifact when the job uploads no archive, so that it never takes
// the job's one archive slot from the job's own files. An error (a
// refused or failed job artifact) fails an otherwise successful job; a
// failed trail-only upload is returned as warn.
func (p *Pipeline) Upload(ctx context.Context, trail string, out io.Writer) (err, warn error) {
	var errs []error
	trailDone := trail == ""
	for _, s := range p.staged {
		file := s.file
		if s.archive && !trailDone {
			merged, merr := p.withTrail(s.file, trail)
			if merr != nil {
				errs = append(errs, fmt.Errorf("adding the audit trail to the archive: %w", merr))
				continue
			}
			file, trailDone = merged, true
		}
		if uerr := p.uploadFile(ctx, file, s.name, s.opts, out); uerr != nil {
			errs = append(errs, uerr)
		}
	}
	if !trailDone {
		merged, merr := p.withTrail("", trail)
		if merr == nil {
			merr = p.uploadFile(ctx, merged, AuditArtifact, ArtifactOptions{Type: "archive", Format: "zip"}, out)
		}
		warn = merr
	}
	return errors.Join(errs...), warn
}

func (p *Pipeline) uploadFile(ctx context.Context, file, name string, o ArtifactOptions, out io.Writer) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("uploading %s: %w", name, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("uploading %s: %w", name, err)
	}
	fmt.Fprintf(out, "Uploading artifacts as %q to coordinator... ", o.Type)
	if err := p.c.UploadArtifact(ctx, p.resp.ID, p.resp.Token, name, f, info.Size(), o); err != nil {
		fmt.Fprintf(out, "failed\n\x1b[31;1mERROR: Uploading artifacts as %q to coordinator... %v\x1b[0;m\n", o.Type, err)
		return err
	}
	fmt.Fprintf(out, "201 Created  id=%d  name=%s  size=%d\n", p.resp.ID, name, info.Size())
	return nil
}

// withTrail writes a zip with the entries of archive (none when "") and
// the trail as AuditEntry; an AuditEntry the job made itself is dropped.
func (p *Pipeline) withTrail(archive, trail string) (string, error) {
	tmp, err := p.tempDir()
	if err != nil {
		return "", err
	}
	out, err := os.CreateTemp(tmp, "archive-*.zip")
	if err != nil {
		return "", err
	}
	zw := zip.NewWriter(out)
	err = func() error {
		if archive != "" {
			zr, err := zip.OpenReader(archive)
			if err != nil {
				return err
			}
			defer zr.Close()
			for _, f := range zr.File {
				if f.Name == AuditEntry || strings.TrimSuffix(f.Name, "/") == path.Dir(AuditEntry) {
					continue
				}
				if err := zw.Copy(f); err != nil {
					return err
				}
			}
		}
		tf, err := os.Open(trail)
		if err != nil {
			return err
		}
		defer tf.Close()
		info, err := tf.Stat()
		if err != nil {
			return err
		}
		hdr, err := zip.FileInfoHeader(info)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Method = AuditEntry, zip.Deflate
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		_, err = io.Copy(w, tf)
		return err
	}()
	err = errors.Join(err, zw.Close(), out.Close())
	if err != nil {
		os.Remove(out.Name())
		return "", err
	}
	return out.Name(), nil
}

// cachesFor returns the cache entries whose policy pulls (push false) or
// pushes (push true).
func (p *Pipeline) cachesFor(push bool) []JobCache {
	var out []JobCache
	for _, c := range p.resp.Cache {
		if len(c.Paths) == 0 && !c.Untracked {
			continue
		}
		switch strings.TrimSpace(p.expand(c.Policy)) {
		case "", "pull-push":
			out = append(out, c)
		case "pull":
			if !push {
				out = append(out, c)
			}
		case "push":
			if push {
				out = append(out, c)
			}
		}
	}
	return out
}

func (p *Pipeline) cacheKey(c JobCache) string {
	k := strings.TrimSpace(p.expand(c.Key))
	if k == "" {
		k = p.resp.JobInfo.Name + "/" + p.resp.GitInfo.Ref
	}
	return k
}

func (p *Pipeline) project() string {
	if p.resp.JobInfo.ProjectFullPath != "" {
		return p.resp.JobInfo.ProjectFullPath
	}
	return job.RepoPath(p.resp.GitInfo.RepoURL)
}

func (p *Pipeline) protected() bool {
	if p.resp.GitInfo.Protected != nil {
		return *p.resp.GitInfo.Protected
	}
	return p.vars["CI_COMMIT_REF_PROTECTED"] == "true"
}

// restoreCaches extracts, for every cache that pulls, the first of its
// key, its fallback_keys and CACHE_FALLBACK_KEY that exists. Failures
// warn and never fail the job.
func (p *Pipeline) restoreCaches(ctx context.Context, dir string, out io.Writer) {
	warn := func(format string, a ...any) { fmt.Fprintf(out, "\x1b[0;33mWARNING: "+format+"\x1b[0;m\n", a...) }
	for _, c := range p.cachesFor(false) {
		if p.o.Cache == nil {
			warn("cache: this runner has no cache directory; cache %q not restored", p.cacheKey(c))
			continue
		}
		keys := []string{p.cacheKey(c)}
		for _, k := range c.FallbackKeys {
			if k = strings.TrimSpace(p.expand(k)); k != "" {
				keys = append(keys, k)
			}
		}
		if k := strings.TrimSpace(p.vars["CACHE_FALLBACK_KEY"]); k != "" {
			if strings.HasSuffix(strings.TrimRight(k, ". "), "-protected") && !p.protected() {
				warn("CACHE_FALLBACK_KEY %q not allowed to end in %q for an unprotected ref", k, "-protected")
			} else {
				keys = append(keys, k)
			}
		}
		fmt.Fprintf(out, "Checking cache for %s...\n", keys[0])
		restored := false
		attempts := p.resp.attempts("RESTORE_CACHE_ATTEMPTS", 1)
		for _, k := range keys {
			ok, err := p.restoreOne(k, dir)
			for i := 2; err != nil && i <= attempts && ctx.Err() == nil; i++ {
				warn("Failed to extract cache %s: %v; retrying (attempt %d of %d, RESTORE_CACHE_ATTEMPTS)", k, err, i, attempts)
				ok, err = p.restoreOne(k, dir)
			}
			if err != nil {
				warn("Failed to extract cache %s: %v", k, err)
				continue
			}
			if ok {
				fmt.Fprintf(out, "Successfully extracted cache %s\n", k)
				restored = true
				break
			}
		}
		if !restored {
			warn("Cache file does not exist; failed to extract cache %s", keys[0])
		}
		if ctx.Err() != nil {
			return
		}
	}
}

func (p *Pipeline) restoreOne(key, dir string) (bool, error) {
	f, err := p.o.Cache.Open(p.project(), key, p.protected())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return false, err
	}
	zr, err := zip.NewReader(f, info.Size())
	if err != nil {
		return false, err
	}
	return true, ExtractZip(zr, dir, nil)
}

// archiveCaches saves every cache due; failures warn.
func (p *Pipeline) archiveCaches(caches []JobCache, sel *Selector, root *os.Root, out io.Writer) {
	warn := func(format string, a ...any) { fmt.Fprintf(out, "\x1b[0;33mWARNING: "+format+"\x1b[0;m\n", a...) }
	for _, c := range caches {
		key := p.cacheKey(c)
		if p.o.Cache == nil {
			warn("cache: this runner has no cache directory; cache %q not saved", key)
			continue
		}
		paths := make([]string, len(c.Paths))
		for i, x := range c.Paths {
			paths[i] = p.expand(x)
		}
		entries, err := sel.Select(Selection{Paths: paths, Untracked: c.Untracked})
		if err != nil {
			warn("Failed to create cache %s: %v", key, err)
			continue
		}
		if len(entries) == 0 {
			warn("No files to cache (%s).", key)
			continue
		}
		if last := p.o.Cache.ModTime(p.project(), key, p.protected()); !last.IsZero() {
			newer := false
			for _, e := range entries {
				if e.Info.ModTime().After(last) {
					newer = true
					break
				}
			}
			if !newer {
				fmt.Fprintf(out, "Creating cache %s... Archive is up to date!\n", key)
				continue
			}
		}
		err = p.o.Cache.Save(p.project(), key, p.protected(), func(w io.Writer) error {
			return WriteZipLevel(w, root, entries, CompressionLevel(p.vars["CACHE_COMPRESSION_LEVEL"]))
		})
		if err != nil {
			warn("Failed to create cache %s: %v", key, err)
			continue
		}
		fmt.Fprintf(out, "Created cache %s (%d files and directories)\n", key, len(entries))
	}
}
