package runner_test

import (
	"github.com/airlock-ci/airlock/internal/wiring"
	"github.com/airlock-ci/airlock/runner"
)

func init() { runner.SetOpenWired(wiring.Open) }
