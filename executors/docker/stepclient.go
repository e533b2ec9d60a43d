package docker

import (
	"io"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/airlock-ci/airlock/executors/stepd"
)

// ResolveStepServer is stepd.Resolve for the [docker] step_server setting.
func ResolveStepServer(setting string) (path, why string, err error) {
	return stepd.Resolve("docker.step_server", setting)
}

// attachStepServer speaks to the step server over the container's attach
// stream: frames go to its stdin; the engine multiplexes its stdout (the
// frames) and stderr (its diagnostics) into one stream, split here.
func attachStepServer(hj types.HijackedResponse, job string) *stepd.Client {
	c := stepd.NewClient(hj.Conn, func() error { hj.Close(); return nil }, job)
	diag := &stepd.Diag{Limit: 4096}
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, diag, hj.Reader)
		if err == nil {
			err = io.EOF
		}
		pw.CloseWithError(err)
	}()
	go func() {
		c.Run(pr, diag.String)
		_ = pr.Close()
	}()
	return c
}
