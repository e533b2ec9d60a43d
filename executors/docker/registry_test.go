package docker

import (
	"context"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/registry"
)

// A private image (a real registry on loopback that wants a password) is
// pulled with the job's credentials for its registry, and only with them:
// without, the pull fails naming the registry, never the password.
func TestCreatePullsWithJobCredentials(t *testing.T) {
	reg := registry.Require(t)
	state := t.TempDir()
	e, runner := newTestExecutorWith(t, Config{RuntimeDir: t.TempDir(), StateDir: state})
	ref := reg.Push(t, testenv.TestImage, "private/busybox:job")
	ctx := context.Background()
	spec := executors.Spec{RunnerID: runner, JobID: "private", Image: ref, Pull: executors.PullIfNotPresent, WorkDir: "/builds",
		RegistryAuth: []executors.RegistryAuth{{Registry: "other.example", Username: "x", Password: "wrong-host"}}}
	if c, err := e.Create(ctx, spec); err == nil {
		c.Destroy(ctx)
		t.Fatal("Create pulled a private image without its registry's credentials")
	} else if !strings.Contains(err.Error(), "without credentials for "+reg.Host) {
		t.Errorf("Create error = %v, want it to say no credentials were given for %s", err, reg.Host)
	}
	spec.RegistryAuth = append(spec.RegistryAuth, executors.RegistryAuth{Registry: "http://" + reg.Host + "/", Username: reg.Username, Password: "not-" + reg.Password})
	if c, err := e.Create(ctx, spec); err == nil {
		c.Destroy(ctx)
		t.Fatal("Create pulled a private image with a wrong password")
	} else if strings.Contains(err.Error(), reg.Password) || !strings.Contains(err.Error(), "with the job's credentials for "+reg.Host) {
		t.Errorf("Create error = %v, want the registry named and no password", err)
	}
	spec.RegistryAuth[1].Password = reg.Password
	c, err := e.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create with the registry's credentials: %v", err)
	}
	defer c.Destroy(ctx)
	var out strings.Builder
	if code, err := c.Exec(ctx, executors.Exec{Cmd: []string{"echo", "from-private"}, Stdout: &out}); err != nil || code != 0 || out.String() != "from-private\n" {
		t.Errorf("Exec = %d, %v, %q", code, err, out.String())
	}
	// Now here, the image is still not lent to a job without credentials
	// (nor to one after a restart or a reboot, which empties the runtime
	// directory: the list is in the state directory).
	e2, err := New(ctx, Config{Grace: e.grace, StepServer: e.cfg.StepServer, RuntimeDir: t.TempDir(), StateDir: state}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	for _, ex := range []*Executor{e, e2} {
		noAuth := spec
		noAuth.JobID, noAuth.RegistryAuth = "private-2", nil
		if c2, err := ex.Create(ctx, noAuth); err == nil {
			c2.Destroy(ctx)
			t.Error("a job without credentials got the private image another job pulled")
		} else if !strings.Contains(err.Error(), "without credentials for "+reg.Host) {
			t.Errorf("Create without credentials = %v", err)
		}
	}
	// The same content under a public name is not made private.
	if c3, err := e.Create(ctx, executors.Spec{RunnerID: runner, JobID: "public", Image: testenv.TestImage, Pull: executors.PullIfNotPresent, WorkDir: "/builds"}); err != nil {
		t.Errorf("Create of the public image with the same content: %v", err)
	} else {
		c3.Destroy(ctx)
	}
	// A service's image is pulled with the same credentials.
	svcRef := reg.Push(t, testenv.TestImage, "private/service:job")
	s, err := c.(executors.ServiceStarter).StartService(ctx, executors.ServiceSpec{Name: "svc-0", Image: svcRef, Pull: executors.PullIfNotPresent,
		Cmd: []string{"sleep", "60"}, RegistryAuth: spec.RegistryAuth})
	if err != nil {
		t.Fatalf("StartService with the registry's credentials: %v", err)
	}
	s.Destroy(ctx)
}
