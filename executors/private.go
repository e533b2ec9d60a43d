package executors

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/distribution/reference"
)

// PrivateImages are the repositories ("host/path", without tag or
// digest) from which this host pulled an image with a job's credentials.
// Under if-not-present a local image of one is not simply used by the next
// job that names it: it is pulled again with that job's own credentials,
// or none (the layers are there: only the registry's answer is asked
// for), so that a job never runs a private image it could not have
// pulled, while a public one stays usable by all. By repository,
// not image ID: the same content under a public name stays public. The
// set is kept in a file of the state directory, so that a restarted
// agent and a rebooted host keep it.
type PrivateImages struct {
	path string
	mu   sync.Mutex
	ids  map[string]bool
}

// LoadPrivateImages reads the list kept at path (none yet: empty).
func LoadPrivateImages(path string) (*PrivateImages, error) {
	p := &PrivateImages{path: path, ids: map[string]bool{}}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the private images list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if repo := strings.TrimSpace(sc.Text()); repo != "" {
			p.ids[repo] = true
		}
	}
	return p, sc.Err()
}

// repository is ref's repository, or "" for a reference that does not
// parse.
func repository(ref string) string {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ""
	}
	return reference.TrimNamed(n).String()
}

// Has reports whether ref's repository was pulled with a job's
// credentials.
func (p *PrivateImages) Has(ref string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ids[repository(ref)]
}

// Add records ref's repository; a failure to keep it on disk is returned
// (it is still treated as private by this process).
func (p *PrivateImages) Add(ref string) error {
	id := repository(ref)
	p.mu.Lock()
	defer p.mu.Unlock()
	if id == "" || p.ids[id] {
		return nil
	}
	p.ids[id] = true
	if err := os.MkdirAll(filepath.Dir(p.path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, id)
	return errors.Join(err, f.Close())
}
