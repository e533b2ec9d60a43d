package gitlab

import (
	"archive/zip"
	"compress/flate"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"

	"github.com/bmatcuk/doublestar/v4"
)

// Archives are built on the host from a copy of the job's workspace (a
// staging directory only the runner writes), never inside the job. Every
// read goes through an os.Root opened on that directory and opens files
// with O_NOFOLLOW: a symlink the job made (ln -s /etc/shadow out/x) is
// stored as a symlink entry holding its target, and never resolved on the
// host.

// Selection says which files of the workspace go into an archive, with
// GitLab's rules (research §3).
type Selection struct {
	// Paths are project-relative doublestar globs (absolute paths inside
	// ProjectDir are accepted). Every match is walked recursively and every
	// walked path is added, directories included.
	Paths []string
	// Exclude patterns are matched against every walked path; a matched
	// directory drops only its own entry (dir/** drops what is below).
	Exclude []string
	// Untracked adds the files git does not track (Untracked below).
	Untracked bool
}

// Entry is one member of an archive: a regular file, a directory or a
// symlink, by its project-relative slash path.
type Entry struct {
	Name string
	Info fs.FileInfo

	store bool // written without compression
}

// Selector picks entries from a staging copy of the workspace.
type Selector struct {
	// Root is the staging directory, opened with os.OpenRoot.
	Root *os.Root
	// ProjectDir is CI_PROJECT_DIR in the job, to make absolute paths
	// relative.
	ProjectDir string
	// Tracked is the set of files the checkout produced (slash paths);
	// nil when the job had no git checkout.
	Tracked map[string]bool
	// Warn receives the warnings GitLab prints (missing paths, paths
	// outside the project, excluded counts).
	Warn func(format string, a ...any)
}

func (s *Selector) warn(format string, a ...any) {
	if s.Warn != nil {
		s.Warn(format, a...)
	}
}

// relPattern makes a path pattern project-relative; ok is false (after a
// warning) for a path outside the project directory.
func (s *Selector) relPattern(p string) (string, bool) {
	orig := p
	if path.IsAbs(p) {
		dir := path.Clean(s.ProjectDir)
		if p != dir && !strings.HasPrefix(p, dir+"/") {
			s.warn("%s: artifact path is not a subpath of project directory: %s", orig, dir)
			return "", false
		}
		p = strings.TrimPrefix(strings.TrimPrefix(p, dir), "/")
	}
	p = path.Clean("./" + p)
	if p == ".." || strings.HasPrefix(p, "../") {
		s.warn("%s: artifact path is not a subpath of project directory: %s", orig, s.ProjectDir)
		return "", false
	}
	return p, true
}

// LiteralPrefixes returns the directories (or files) whose copy is enough
// to evaluate the patterns: each pattern's segments before its first
// glob character, "." when a pattern starts with one. Nested prefixes are
// dropped.
func LiteralPrefixes(projectDir string, patterns []string) []string {
	s := &Selector{ProjectDir: projectDir}
	var out []string
	for _, p := range patterns {
		rel, ok := s.relPattern(p)
		if !ok {
			continue
		}
		var keep []string
		for _, seg := range strings.Split(rel, "/") {
			if strings.ContainsAny(seg, `*?[{\`) {
				break
			}
			keep = append(keep, seg)
		}
		pre := path.Clean(strings.Join(keep, "/"))
		if pre == "" {
			pre = "."
		}
		out = append(out, pre)
	}
	sort.Strings(out)
	var uniq []string
	for _, p := range out {
		covered := false
		for _, u := range uniq {
			if u == "." || p == u || strings.HasPrefix(p, u+"/") {
				covered = true
				break
			}
		}
		if !covered {
			uniq = append(uniq, p)
		}
	}
	if len(uniq) > 0 && uniq[0] == "." {
		return []string{"."}
	}
	return uniq
}

// Select returns the entries of sel, sorted by name, without duplicates.
func (s *Selector) Select(sel Selection) ([]Entry, error) {
	fsys := s.Root.FS()
	seen := map[string]bool{}
	var picked []Entry
	add := func(name string, info fs.FileInfo) {
		if info.IsDir() {
			name += "/"
		}
		if !seen[name] {
			seen[name] = true
			picked = append(picked, Entry{Name: name, Info: info})
		}
	}
	walk := func(match string) error {
		info, err := s.Root.Lstat(match)
		if err != nil {
			return nil // vanished or escaping: nothing to add
		}
		if !info.IsDir() {
			if keepType(info) {
				add(match, info)
			}
			return nil
		}
		return fs.WalkDir(fsys, match, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if p == "." {
				return nil // the project directory itself is no entry
			}
			info, err := s.Root.Lstat(p)
			if err != nil || !keepType(info) {
				return nil
			}
			add(p, info)
			return nil
		})
	}
	for _, p := range sel.Paths {
		rel, ok := s.relPattern(p)
		if !ok {
			continue
		}
		if !doublestar.ValidatePattern(rel) {
			return nil, fmt.Errorf("artifact path %q: invalid pattern", p)
		}
		var matches []string
		if !strings.ContainsAny(rel, `*?[{\`) {
			// A literal path: Lstat it (the glob would stat through a
			// final symlink, and drop one that points outside).
			if _, err := s.Root.Lstat(rel); err == nil {
				matches = []string{rel}
			}
		} else {
			var err error
			matches, err = doublestar.Glob(fsys, rel, doublestar.WithNoFollow())
			if err != nil {
				return nil, fmt.Errorf("matching %q: %w", p, err)
			}
		}
		if len(matches) == 0 {
			s.warn("%s: no matching files. Ensure that the artifact path is relative to the working directory (%s)", p, s.ProjectDir)
		}
		for _, m := range matches {
			if err := walk(m); err != nil {
				return nil, err
			}
		}
	}
	if sel.Untracked {
		if s.Tracked == nil {
			s.warn("untracked: the job has no git checkout; no untracked files are added")
		} else {
			err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
				if err != nil || p == "." {
					return nil
				}
				if d.IsDir() {
					if p == ".git" {
						return fs.SkipDir
					}
					return nil
				}
				if s.Tracked[p] {
					return nil
				}
				if info, err := s.Root.Lstat(p); err == nil && keepType(info) {
					add(p, info)
				}
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("listing untracked files: %w", err)
			}
		}
	}
	if len(sel.Exclude) > 0 {
		var rels []string
		for _, x := range sel.Exclude {
			if rel, ok := s.relPattern(x); ok {
				if !doublestar.ValidatePattern(rel) {
					return nil, fmt.Errorf("artifact exclude %q: invalid pattern", x)
				}
				rels = append(rels, rel)
			}
		}
		counts := make([]int, len(rels))
		kept := picked[:0]
		for _, e := range picked {
			name := strings.TrimSuffix(e.Name, "/")
			drop := false
			for i, x := range rels {
				if doublestar.MatchUnvalidated(x, name) {
					counts[i]++
					drop = true
				}
			}
			if !drop {
				kept = append(kept, e)
			}
		}
		picked = kept
		for i, x := range rels {
			s.warn("%s: excluded %d files", x, counts[i])
		}
	}
	sort.Slice(picked, func(a, b int) bool { return picked[a].Name < picked[b].Name })
	return picked, nil
}

// keepType: regular files, directories and symlinks go into archives;
// pipes, sockets and devices never do.
func keepType(info fs.FileInfo) bool {
	m := info.Mode()
	return m.IsRegular() || m.IsDir() || m&fs.ModeSymlink != 0
}

// openRegular opens a regular file of root without following a symlink
// in its last component (os.Root refuses escapes through earlier ones).
func openRegular(root *os.Root, name string) (*os.File, error) {
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil || !info.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("opening %s: not a regular file", name)
	}
	return f, nil
}

// CompressionLevel parses ARTIFACT_COMPRESSION_LEVEL / CACHE_COMPRESSION_LEVEL
// (fastest: stored, fast, default, slow, slowest) into a flate level;
// 0 means stored. Unknown or empty gives default (5, fastzip's).
func CompressionLevel(s string) int {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "fastest":
		return 0
	case "fast":
		return flate.BestSpeed
	case "slow":
		return 7
	case "slowest":
		return flate.BestCompression
	}
	return 5
}

// WriteZip writes entries as a zip archive at the default level.
func WriteZip(w io.Writer, root *os.Root, entries []Entry) error {
	return WriteZipLevel(w, root, entries, CompressionLevel(""))
}

// WriteZipLevel writes entries as a zip archive: files deflated at level
// (0: stored) with their modes, directories as "name/" entries, symlinks
// as symlink entries whose data is the link target.
func WriteZipLevel(w io.Writer, root *os.Root, entries []Entry, level int) error {
	zw := zip.NewWriter(w)
	zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(out, level)
	})
	for _, e := range entries {
		if level == 0 && e.Info.Mode().IsRegular() {
			e.store = true
		}
		if err := addZipEntry(zw, root, e); err != nil {
			return fmt.Errorf("archiving %s: %w", e.Name, err)
		}
	}
	return zw.Close()
}

func addZipEntry(zw *zip.Writer, root *os.Root, e Entry) error {
	hdr, err := zip.FileInfoHeader(e.Info)
	if err != nil {
		return err
	}
	hdr.Name = e.Name
	mode := e.Info.Mode()
	switch {
	case mode.IsDir():
		hdr.Method = zip.Store
		_, err := zw.CreateHeader(hdr)
		return err
	case mode&fs.ModeSymlink != 0:
		target, err := root.Readlink(e.Name)
		if err != nil {
			return err
		}
		hdr.Method = zip.Store
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		_, err = io.WriteString(w, target)
		return err
	}
	f, err := openRegular(root, e.Name)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr.Method = zip.Deflate
	if e.store {
		hdr.Method = zip.Store
	}
	w, err := zw.CreateHeader(hdr)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, f)
	return err
}

// WriteGzip writes the regular files of entries as concatenated gzip
// members (GitLab's format for junit, dotenv, cobertura, ... reports):
// Name is the base name, Comment the project-relative path, both written
// as "e:" + URL path escape when they are not plain ASCII or hold '%'.
// Symlinks and directories are skipped.
func WriteGzip(w io.Writer, root *os.Root, entries []Entry) (int, error) {
	n := 0
	for _, e := range entries {
		if !e.Info.Mode().IsRegular() {
			continue
		}
		f, err := openRegular(root, e.Name)
		if err != nil {
			return n, fmt.Errorf("archiving %s: %w", e.Name, err)
		}
		gz := gzip.NewWriter(w)
		gz.Name = gzipName(path.Base(e.Name))
		gz.Comment = gzipName(e.Name)
		gz.ModTime = e.Info.ModTime()
		_, err = io.Copy(gz, f)
		f.Close()
		if err == nil {
			err = gz.Close()
		}
		if err != nil {
			return n, fmt.Errorf("archiving %s: %w", e.Name, err)
		}
		n++
	}
	return n, nil
}

func gzipName(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || c < 0x20 || c == '%' {
			return "e:" + url.PathEscape(s)
		}
	}
	return s
}

// ErrRawNeedsOneFile: a raw artifact is exactly one file.
var ErrRawNeedsOneFile = errors.New("only one file can be sent as raw")

// WriteRaw copies the single regular file of entries.
func WriteRaw(w io.Writer, root *os.Root, entries []Entry) error {
	var files []Entry
	for _, e := range entries {
		if e.Info.Mode().IsRegular() {
			files = append(files, e)
		}
	}
	if len(files) != 1 {
		return fmt.Errorf("%w (found %d)", ErrRawNeedsOneFile, len(files))
	}
	f, err := openRegular(root, files[0].Name)
	if err != nil {
		return fmt.Errorf("archiving %s: %w", files[0].Name, err)
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
