package autoscale

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/internal/atomicfile"
)

// registration is one JIT runner this host created, journaled before
// generate-jitconfig is called (without ID) and again once GitHub named it.
// It holds no secret: the JIT config is never written down.
type registration struct {
	Name    string    `json:"name"`
	ID      int64     `json:"id,omitempty"`
	Created time.Time `json:"created"`
	Job     int64     `json:"job,omitempty"` // the queued job it was made for
	Repo    string    `json:"repo,omitempty"`
}

// journal keeps one file per registration under
// <state>/autoscale/<name>/.
type journal struct{ dir string }

func openJournal(stateDir, name string) (*journal, error) {
	if strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return nil, fmt.Errorf("name %q: must not contain path separators", name)
	}
	dir := filepath.Join(stateDir, "autoscale", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the registration journal: %w", err)
	}
	return &journal{dir: dir}, nil
}

func (j *journal) path(name string) string { return filepath.Join(j.dir, name+".json") }

func (j *journal) put(r registration) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(j.path(r.Name), b, 0o600)
}

func (j *journal) remove(name string) error {
	if err := os.Remove(j.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// list returns every registration; an unreadable file is reported, and
// its runner (found by name on GitHub) is then unknown and deleted.
func (j *journal) list() ([]registration, error) {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("reading the registration journal: %w", err)
	}
	var out []registration
	var errs []error
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(j.dir, e.Name()))
		var r registration
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil || r.Name+".json" != e.Name() {
			errs = append(errs, fmt.Errorf("registration journal %s: unreadable (%v); delete the file", filepath.Join(j.dir, e.Name()), err))
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}
