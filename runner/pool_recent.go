package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/atomicfile"
	"github.com/airlock-ci/airlock/runner/job"
)

// note counts j's image among the recent ones, when the pool keeps the
// most used, and updates which images are kept. Only an image that can be
// kept without the job is counted: not one of a job with services (those
// never claim), with registry credentials for it, or whose name holds a value of
// its private variables (names end up in logs and metric labels).
func (p *Pool) note(j *job.Job) {
	// Credentials for another registry do not count: GitLab gives every
	// job its own registry's.
	if p == nil || p.recent == 0 || j.Image == "" || !warmable(j) ||
		executors.AuthFor(executors.RegistryHost(j.Image), registryAuth(j)) != nil ||
		slices.ContainsFunc(privateValues(j), func(v string) bool { return strings.Contains(j.Image, v) }) {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if len(p.history) == recentWindow {
		copy(p.history, p.history[1:])
		p.history = p.history[:recentWindow-1]
	}
	p.history = append(p.history, j.Image)
	p.historyDirty = true
	dropped := p.rewantLocked()
	m := p.r.metrics.Load()
	var gone []*warmSandbox
	for img, ws := range dropped {
		m.PoolReady(img, 0)
		gone = append(gone, ws...)
	}
	p.mu.Unlock()
	if len(dropped) > 0 {
		p.log.Debug("images no longer among the most used", "images", slices.Sorted(maps.Keys(dropped)))
	}
	p.discard(gone)
	p.nudge()
}

// rewantLocked sets want to the listed images and the recent most used
// ones (used by two jobs at least; ties go to the one used last), and
// returns the ready sandboxes of the images no longer kept, taken out.
func (p *Pool) rewantLocked() map[string][]*warmSandbox {
	count, last := map[string]int{}, map[string]int{}
	for i, img := range p.history {
		count[img]++
		last[img] = i
	}
	var imgs []string
	for img, n := range count {
		if _, ok := p.listed[img]; !ok && n >= 2 {
			imgs = append(imgs, img)
		}
	}
	sort.Slice(imgs, func(a, b int) bool {
		if count[imgs[a]] != count[imgs[b]] {
			return count[imgs[a]] > count[imgs[b]]
		}
		return last[imgs[a]] > last[imgs[b]]
	})
	want := maps.Clone(p.listed)
	for _, img := range imgs[:min(len(imgs), p.recent)] {
		want[img] = p.recentSize
	}
	dropped := map[string][]*warmSandbox{}
	for img := range p.want {
		if _, ok := want[img]; !ok {
			dropped[img] = p.ready[img]
			delete(p.ready, img)
		}
	}
	p.want = want
	return dropped
}

// historyFormat is the recent images file's format: the images of the
// last jobs, oldest first.
type historyFormat struct {
	Version int      `json:"version"`
	Images  []string `json:"images"`
}

// loadHistory reads a recent images file (none: empty). Only the last
// recentWindow entries are kept; an entry that cannot be an image name
// makes the file unreadable.
func loadHistory(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h historyFormat
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if h.Version != 1 {
		return nil, fmt.Errorf("%s: version %d, want 1", path, h.Version)
	}
	for i, img := range h.Images {
		if img == "" || len(img) > 512 || strings.ContainsFunc(img, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return nil, fmt.Errorf("%s: images[%d] %q is not an image name", path, i, img)
		}
	}
	return h.Images[max(0, len(h.Images)-recentWindow):], nil
}

// saveHistory writes the recent images file if the history changed.
func (p *Pool) saveHistory() {
	p.mu.Lock()
	if p.historyFile == "" || !p.historyDirty {
		p.mu.Unlock()
		return
	}
	b, err := json.Marshal(historyFormat{Version: 1, Images: p.history})
	p.historyDirty = false
	p.mu.Unlock()
	if err == nil {
		err = atomicfile.WriteFile(p.historyFile, b, 0o600)
	}
	if err != nil {
		p.log.Warn("saving the recent images", "file", p.historyFile, "error", err)
	}
}

// warmable reports whether a job can run in a warm sandbox, made ahead
// without it: no services (their /etc/hosts), the runner's /dev/shm and
// work directory.
func warmable(j *job.Job) bool {
	return len(j.Services) == 0 && j.ShmSize == 0 && j.WorkDir == ""
}
