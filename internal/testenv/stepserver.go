package testenv

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

var stepServer struct {
	once sync.Once
	path string
	err  error
}

// StepServer builds the Docker executor's step server (cmd/airlock-stepd,
// static) once per test process and returns its path, as the executor's
// step_server setting. Every test process of the user shares one
// directory in the temp dir: each build is renamed over the last (what a
// container already mounted stays as it was), so no run leaves a copy
// behind.
func StepServer(t testing.TB) string {
	t.Helper()
	stepServer.once.Do(func() {
		stepServer.path, stepServer.err = buildStepServer()
	})
	if stepServer.err != nil {
		t.Fatalf("building the step server: %v", stepServer.err)
	}
	return stepServer.path
}

func buildStepServer() (string, error) {
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("airlock-test-stepd-%d", os.Getuid()))
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	if fi, err := os.Lstat(dir); err != nil {
		return "", err
	} else if st, ok := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s: not a private directory of this user", dir)
	}
	tmp, err := os.CreateTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name()) // gone once renamed; left by a failed build
	cmd := exec.Command("go", "build", "-trimpath", "-o", tmp.Name(), "github.com/airlock-ci/airlock/cmd/airlock-stepd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/airlock-stepd: %v\n%s", err, out)
	}
	p := filepath.Join(dir, "airlock-stepd")
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", err
	}
	return p, nil
}
