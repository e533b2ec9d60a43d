package runner

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/airlock-ci/airlock/internal/atomicfile"
)

var runnerIDRE = regexp.MustCompile(`^[a-z0-9]{6,16}$`)

// LoadOrCreateID returns the runner id persisted in stateDir/runner_id,
// creating it on first use. Everything the runner creates carries it, so
// that recovery touches only this runner's leftovers.
func LoadOrCreateID(stateDir string) (string, error) {
	path := filepath.Join(stateDir, "runner_id")
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !runnerIDRE.MatchString(id) {
			return "", fmt.Errorf("reading runner id: %s holds %q, want 6-16 lower-case letters and digits", path, id)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading runner id: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return "", fmt.Errorf("creating state directory: %w", err)
	}
	r := make([]byte, 4)
	if _, err := rand.Read(r); err != nil {
		return "", err
	}
	id := "r" + hex.EncodeToString(r)
	err = atomicfile.CreateOnce(path, []byte(id+"\n"), 0o644)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateID(stateDir) // another process won the race
	}
	if err != nil {
		return "", fmt.Errorf("creating runner id: %w", err)
	}
	return id, nil
}
