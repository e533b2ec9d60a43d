package docker

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/image"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// A job container created with a network holder is in the holder's
// namespace (made by runc with the job's sysctls, loopback only, as a
// job's own), not the host's nor one of its own; the holder runs nothing
// but the step server, as no account, and the recovery listing finds it.
func TestNetworkHolder(t *testing.T) {
	e, runner := newTestExecutor(t)
	ctx := context.Background()
	h, err := e.HoldNetwork(ctx, runner, "pool-holder", map[string]string{"io.airlock.owner": "test"})
	if err != nil {
		t.Fatalf("HoldNetwork: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Destroy(ctx); err != nil {
			t.Errorf("Destroy holder: %v", err)
		}
	})
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	held, err := os.Readlink(h.NetNS())
	if err != nil || held == host {
		t.Fatalf("holder namespace %s = %q (%v), want one other than the host's %q", h.NetNS(), held, err, host)
	}
	info, err := e.cli.ContainerInspect(ctx, h.ID())
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Config.Entrypoint; len(got) != 2 || got[1] != "hold" || info.Config.User != "65534:65534" {
		t.Errorf("holder runs %q as %q, want the step server's hold as 65534", got, info.Config.User)
	}
	if hc := info.HostConfig; len(hc.CapDrop) != 1 || hc.CapDrop[0] != "ALL" || !hc.ReadonlyRootfs || hc.Memory != holderLimits.Memory {
		t.Errorf("holder not hardened: cap drop %v, read-only %v, memory %d", hc.CapDrop, hc.ReadonlyRootfs, hc.Memory)
	}

	c, err := e.Create(ctx, executors.Spec{RunnerID: runner, JobID: "held", Image: testenv.TestImage,
		Pull: executors.PullNever, WorkDir: "/builds", NetHolder: h.ID()})
	if err != nil {
		t.Fatalf("Create with a holder: %v", err)
	}
	t.Cleanup(func() { c.Destroy(ctx) })
	if got, err := os.Readlink(c.NetNS()); err != nil || got != held {
		t.Errorf("job namespace = %q (%v), want the holder's %q", got, err, held)
	}
	code, out, stderr := shOut(t, c, "", "ls /sys/class/net; cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv4/ping_group_range; cat /etc/hosts")
	if want := "lo\n1\n1\t0\n" + executors.LocalhostLines; code != 0 || out != want {
		t.Errorf("in the job: exit %d, stdout %q (stderr %q), want %q", code, out, stderr, want)
	}
	// The job sees its own processes only, not the holder's.
	if code, out, _ := shOut(t, c, "", "ps -o args"); code != 0 || strings.Contains(out, stepdHold) || !strings.Contains(out, "ps -o args") {
		t.Errorf("processes in the job (exit %d):\n%s", code, out)
	}
	if out, err := os.ReadFile("/proc/" + strings.TrimPrefix(strings.TrimSuffix(h.NetNS(), "/ns/net"), "/proc/") + "/cmdline"); err != nil || strings.ReplaceAll(string(out), "\x00", " ") != stepdHold+" " {
		t.Errorf("the holder's process runs %q (%v), want %q", out, err, stepdHold)
	}

	if info, err := e.cli.ContainerInspect(ctx, h.ID()); err != nil || !info.State.Running {
		t.Errorf("the holder stopped: %+v (%v)", info.State, err)
	}

	left, err := e.Leftovers(ctx, runner)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range left {
		found = found || (l.ID == h.ID() && l.JobID == "pool-holder" && l.Labels[LabelHolder] == "1" && l.Labels["io.airlock.owner"] == "test")
	}
	if !found {
		t.Errorf("Leftovers of %s = %+v: no holder", runner, left)
	}

	// The job container outlives nothing of its holder's: removing the
	// holder first leaves the job's namespace in place, and a second
	// Destroy does nothing.
	if err := h.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Destroy(ctx); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if code, out, _ := shOut(t, c, "", "ls /sys/class/net"); code != 0 || out != "lo\n" {
		t.Errorf("after the holder's removal: exit %d, %q", code, out)
	}
}

var stepdHold = stepd.Target + " " + stepd.HoldArg

// A job container joins only a running holder of its own runner: never
// another container's namespace (a job's, or another runner's holder).
func TestNetworkHolderRefusesOthers(t *testing.T) {
	e, runner := newTestExecutor(t)
	ctx := context.Background()
	job := create(t, e, runner, "other-job")
	other, otherRunner := newTestExecutor(t)
	h, err := other.HoldNetwork(ctx, otherRunner, "pool-other", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Destroy(ctx)
	for _, tc := range []struct{ holder, want string }{
		{job.ID(), "is not a network holder of runner " + runner},
		{h.ID(), "is not a network holder of runner " + runner},
		{"no-such-container", "network holder no-such-con"},
	} {
		c, err := e.Create(ctx, executors.Spec{RunnerID: runner, JobID: "joiner", Image: testenv.TestImage,
			Pull: executors.PullNever, NetHolder: tc.holder})
		if err == nil {
			c.Destroy(ctx)
			t.Errorf("Create joined %s", tc.holder)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Create with holder %s: %v, want %q", tc.holder, err, tc.want)
		}
	}
	if _, err := e.Create(ctx, executors.Spec{RunnerID: runner, JobID: "joiner", Image: testenv.TestImage,
		Pull: executors.PullNever, NetNS: "/var/run/netns/x"}); err == nil || !strings.Contains(err.Error(), "cannot join /var/run/netns/x") {
		t.Errorf("Create with a NetNS: %v", err)
	}
}

// The holder image removed behind the executor's back (docker image prune
// -a, once no holder runs) is imported again.
func TestNetworkHolderImageRemoved(t *testing.T) {
	e, runner := newTestExecutor(t)
	// An image of its own: other tests' holders keep HolderImage in use.
	e.holderRef = fmt.Sprintf("airlock/netns-holder:test-%d", os.Getpid())
	ctx := context.Background()
	for i := range 2 {
		h, err := e.HoldNetwork(ctx, runner, fmt.Sprintf("pool-gone-%d", i), nil)
		if err != nil {
			t.Fatalf("HoldNetwork %d: %v", i, err)
		}
		if err := h.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := e.cli.ImageRemove(ctx, e.holderRef, image.RemoveOptions{}); err != nil {
			t.Fatalf("removing %s: %v", e.holderRef, err)
		}
	}
}

// Without a step server there is no holder, and the executor says why.
func TestNetworkHolderNeedsStepServer(t *testing.T) {
	testenv.RequireDocker(t)
	e, err := New(context.Background(), Config{StepServer: "off"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.HoldsNetworks(); err == nil || !strings.Contains(err.Error(), "step_server") {
		t.Errorf("HoldsNetworks without a step server: %v", err)
	}
	if _, err := e.HoldNetwork(context.Background(), "r", "x", nil); err == nil {
		t.Error("HoldNetwork without a step server succeeded")
	}
}
