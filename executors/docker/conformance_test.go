package docker

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/executortest"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// The suite runs twice: steps through the step server (the default for
// an installed airlock) and as engine execs (step_server = "off").
func TestConformance(t *testing.T) {
	image := testenv.RequireTestImage(t)
	for _, mode := range []struct{ name, server string }{
		{"stepd", testenv.StepServer(t)},
		{"engine-exec", "off"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			newExecutor := func(t *testing.T) executors.Executor {
				e, err := New(context.Background(), Config{Grace: 2 * time.Second, StepServer: mode.server}, nil)
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				t.Cleanup(func() { e.Close() })
				return e
			}
			executortest.Run(t, newExecutor, image, executortest.Options{
				Grace: 2 * time.Second,
				Inspect: func(t *testing.T, c executors.Container) []byte {
					raw, err := exec.Command("docker", "inspect", c.ID()).CombinedOutput()
					if err != nil {
						t.Fatalf("docker inspect: %v: %s", err, raw)
					}
					return raw
				},
			})
		})
	}
}
