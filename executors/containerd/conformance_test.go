package containerd

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/executortest"
	"github.com/airlock-ci/airlock/internal/testenv"
)

func TestConformance(t *testing.T) {
	image := testenv.RequireTestImage(t)
	testenv.RequireRoot(t)
	// Both ways steps run: through the step server (the default) and as
	// task execs (step_server = "off").
	for _, mode := range []struct {
		name string
		mod  func(*Config)
	}{
		{"stepd", nil},
		{"task-exec", func(c *Config) { c.StepServer = "off" }},
	} {
		t.Run(mode.name, func(t *testing.T) { conformance(t, image, mode.mod) })
	}
}

func conformance(t *testing.T, image string, mod func(*Config)) {
	executortest.Run(t, func(t *testing.T) executors.Executor { return newTestExecutor(t, mod) }, image, executortest.Options{
		Grace: 2 * time.Second,
		NetNS: func(t *testing.T) string { return testenv.NewNetNS(t, "airlock-conf") },
		// What `ctr -n NS containers info ID` shows: the record and its spec.
		Inspect: func(t *testing.T, c executors.Container) []byte {
			ctr := c.(*Container)
			info, err := ctr.ctr.Info(ctr.e.ctx(context.Background()))
			if err != nil {
				t.Fatalf("container info: %v", err)
			}
			raw, err := json.Marshal(info)
			if err != nil {
				t.Fatal(err)
			}
			return raw
		},
	})
}
