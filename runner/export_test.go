package runner

import (
	"context"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/runner/config"
)

// openWired is internal/wiring.Open, for the tests of a fully wired
// runner in this package: wiring imports runner, so it cannot be imported
// here; wiring_test.go (package runner_test, in the same test binary) sets
// it at init.
var openWired func(ctx context.Context, cfg *config.Config, log hclog.Logger) (*Runner, error)

// SetOpenWired sets openWired (from package runner_test).
func SetOpenWired(f func(ctx context.Context, cfg *config.Config, log hclog.Logger) (*Runner, error)) {
	openWired = f
}
