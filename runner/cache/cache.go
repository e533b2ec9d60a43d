// Package cache keeps GitLab-style job caches on the runner host: one zip
// archive per (protection level, project, key) under a directory of the
// state dir, bounded in size with least-recently-used eviction.
//
// Keys are sanitised as gitlab-runner does and then hashed into the file
// name, so no key can name a path outside the cache directory. Caches of
// protected and unprotected refs live in separate trees and never mix: an
// unprotected job cannot read or write what a protected one stored, even
// when it names the same key.
//
// A distributed cache (S3, GCS) would implement the same two operations
// (Open for restore, Save for archive) behind gitlab.CacheStore.
package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBytes bounds the cache directory when no size is configured.
const DefaultMaxBytes = 5 << 30

// Store is a host-local cache directory. Its methods are safe for
// concurrent use within one process; writes are atomic (temp file and
// rename), so a reader never sees half an archive.
type Store struct {
	dir string
	max int64
	mu  sync.Mutex
}

// New returns a store in dir (created 0700) bounded to maxBytes (0: the
// default).
func New(dir string, maxBytes int64) (*Store, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating cache directory: %w", err)
	}
	return &Store{dir: dir, max: maxBytes}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Sanitize normalises a cache key as gitlab-runner's cachekey package
// does: "%2f" and "\" become "/", "%2e" becomes ".", ".." is resolved
// inside a virtual root (never above it), trailing white space of the
// segments is dropped. A key with nothing left is an error.
func Sanitize(key string) (string, error) {
	k := key
	for _, r := range []struct{ from, to string }{{"%2f", "/"}, {"%2F", "/"}, {"%2e", "."}, {"%2E", "."}, {`\`, "/"}} {
		k = strings.ReplaceAll(k, r.from, r.to)
	}
	var segs []string
	for _, s := range strings.Split(k, "/") {
		s = strings.TrimRight(s, " \t\r\n")
		switch s {
		case "", ".":
		case "..":
			if len(segs) > 0 {
				segs = segs[:len(segs)-1]
			}
		default:
			segs = append(segs, s)
		}
	}
	out := path.Join(segs...)
	if out == "" || strings.ContainsRune(out, 0) {
		return "", fmt.Errorf("cache key %q could not be sanitized", key)
	}
	return out, nil
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:16])
}

// entryDir is the directory of one cache entry.
func (s *Store) entryDir(project, key string, protected bool) (string, string, error) {
	k, err := Sanitize(key)
	if err != nil {
		return "", "", err
	}
	level := "unprotected"
	if protected {
		level = "protected"
	}
	return filepath.Join(s.dir, level, hash(project), hash(k)), k, nil
}

// Open returns the archive of a cache entry for reading (fs.ErrNotExist
// when there is none) and marks it used for the LRU.
func (s *Store) Open(project, key string, protected bool) (*os.File, error) {
	dir, _, err := s.entryDir(project, key, protected)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "cache.zip")
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now)
	return f, nil
}

// ModTime is when the entry was last written (zero when there is none).
func (s *Store) ModTime(project, key string, protected bool) time.Time {
	dir, _, err := s.entryDir(project, key, protected)
	if err != nil {
		return time.Time{}
	}
	b, err := os.ReadFile(filepath.Join(dir, "metadata.json"))
	if err != nil {
		return time.Time{}
	}
	var m metadata
	if json.Unmarshal(b, &m) != nil {
		return time.Time{}
	}
	return m.Written
}

type metadata struct {
	Key     string    `json:"cachekey"`
	Project string    `json:"project"`
	Written time.Time `json:"written"`
}

// Save stores what write produces as the entry's archive, replacing the
// old one atomically, then evicts the least recently used entries while
// the store is over its size.
func (s *Store) Save(project, key string, protected bool, write func(w io.Writer) error) error {
	dir, k, err := s.entryDir(project, key, protected)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("saving cache %s: %w", k, err)
	}
	tmp, err := os.CreateTemp(dir, ".cache-*.zip")
	if err != nil {
		return fmt.Errorf("saving cache %s: %w", k, err)
	}
	werr := write(tmp)
	if werr == nil {
		werr = tmp.Sync()
	}
	werr = errors.Join(werr, tmp.Close())
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("saving cache %s: %w", k, werr)
	}
	meta, _ := json.Marshal(metadata{Key: k, Project: project, Written: time.Now().UTC()})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "cache.zip")); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("saving cache %s: %w", k, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "metadata.json"), meta, 0o600); err != nil {
		return fmt.Errorf("saving cache %s: %w", k, err)
	}
	return s.evictLocked()
}

// evictLocked removes the least recently used archives until the store
// fits its size.
func (s *Store) evictLocked() error {
	type entry struct {
		dir  string
		size int64
		used time.Time
	}
	var all []entry
	var total int64
	err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cache.zip" {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		all = append(all, entry{filepath.Dir(p), info.Size(), info.ModTime()})
		total += info.Size()
		return nil
	})
	if err != nil {
		return fmt.Errorf("sizing cache: %w", err)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.Before(all[j].used) })
	var errs []error
	for _, e := range all {
		if total <= s.max {
			break
		}
		if err := os.RemoveAll(e.dir); err != nil {
			errs = append(errs, err)
			continue
		}
		total -= e.size
	}
	if len(errs) > 0 {
		return fmt.Errorf("evicting caches: %w", errors.Join(errs...))
	}
	return nil
}
