package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var stepServer struct {
	once sync.Once
	path string
	err  error
}

// StepServer builds the Docker executor's step server (cmd/airlock-stepd,
// static) once per test process and returns its path, as the executor's
// step_server setting. The directory is left in the temp dir for the
// process's later tests; it is a few MiB.
func StepServer(t testing.TB) string {
	t.Helper()
	stepServer.once.Do(func() {
		dir, err := os.MkdirTemp("", "airlock-stepd-")
		if err != nil {
			stepServer.err = err
			return
		}
		p := filepath.Join(dir, "airlock-stepd")
		cmd := exec.Command("go", "build", "-trimpath", "-o", p, "github.com/airlock-ci/airlock/cmd/airlock-stepd")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			stepServer.err = fmt.Errorf("go build cmd/airlock-stepd: %v\n%s", err, out)
			return
		}
		stepServer.path = p
	})
	if stepServer.err != nil {
		t.Fatalf("building the step server: %v", stepServer.err)
	}
	return stepServer.path
}
