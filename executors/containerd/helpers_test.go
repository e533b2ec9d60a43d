package containerd

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// newTestExecutor returns an executor in a containerd namespace of the
// test's own (testenv.ContainerdNamespace checks at cleanup that nothing
// of a job is left in it, and removes it).
func newTestExecutor(t *testing.T, mod func(*Config)) *Executor {
	t.Helper()
	testenv.RequireTestImage(t)
	cfg := Config{
		Address:   testenv.ContainerdSocket(),
		Namespace: testenv.ContainerdNamespace(t),
		Grace:     2 * time.Second,
		// The default of an installed airlock: steps through the step
		// server ("off" in a test's mod for task execs).
		StepServer: testenv.StepServer(t),
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := hclog.NewNullLogger()
	if testing.Verbose() {
		log = hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: testWriter{t}})
	}
	e, err := New(ctx, cfg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }
