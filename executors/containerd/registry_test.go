package containerd

import (
	"context"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/registry"
)

// containerd pulls a private image from a real registry (loopback, plain
// HTTP as Docker allows) with the job's credentials, and fails without.
func TestCreatePullsWithJobCredentials(t *testing.T) {
	reg := registry.Require(t)
	ref := reg.Push(t, testenv.TestImage, "private/busybox:ctrd")
	runDir := t.TempDir()
	e := newTestExecutor(t, func(c *Config) { c.DockerHost = NoDocker; c.RuntimeDir = runDir })
	spec := testSpec("private")
	spec.Image = ref
	spec.Pull = executors.PullIfNotPresent
	if c, err := e.Create(context.Background(), spec); err == nil {
		c.Destroy(context.Background())
		t.Fatal("Create pulled a private image without credentials")
	} else if strings.Contains(err.Error(), reg.Password) {
		t.Errorf("Create error holds the password: %v", err)
	}
	spec.RegistryAuth = []executors.RegistryAuth{{Registry: reg.Host, Username: reg.Username, Password: reg.Password}}
	c := create(t, e, spec)
	if code, out := run(t, c, "echo from-private"); code != 0 || out != "from-private\n" {
		t.Errorf("Exec = %d, %q", code, out)
	}
	// Now in the namespace, it is still not lent to a job without
	// credentials: pulled again without them, it is refused.
	noAuth := spec
	noAuth.JobID, noAuth.RegistryAuth = "private-2", nil
	if c2, err := e.Create(context.Background(), noAuth); err == nil {
		c2.Destroy(context.Background())
		t.Error("a job without credentials got the private image another job pulled")
	}
}
