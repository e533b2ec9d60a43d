package docker

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/stepd"
	"github.com/airlock-ci/airlock/internal/testenv"
)

func shOut(t *testing.T, c executors.Container, user, script string) (int, string, string) {
	t.Helper()
	var out, errOut syncBuffer
	code, err := c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"/bin/sh", "-c", script}, User: user, Stdout: &out, Stderr: &errOut,
	})
	if err != nil {
		t.Fatalf("Exec(%q): %v", script, err)
	}
	return code, out.String(), errOut.String()
}

// Step output travels on the step server's stdout: the engine keeps no
// copy of it (a json-file log would hold it unmasked on the host).
func TestStepServerOutputNotLoggedByEngine(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "nolog")
	dc := c.(*Container)
	if dc.step == nil {
		t.Fatal("the container runs without the step server")
	}
	const marker = "step-output-7f3a9c"
	if _, out, _ := shOut(t, c, "", "echo "+marker+"; echo "+marker+" >&2"); out != marker+"\n" {
		t.Fatalf("stdout = %q", out)
	}
	info, err := e.cli.ContainerInspect(context.Background(), c.ID())
	if err != nil {
		t.Fatal(err)
	}
	if info.HostConfig.LogConfig.Type != "none" {
		t.Errorf("log driver = %q, want none", info.HostConfig.LogConfig.Type)
	}
	if len(info.Config.Entrypoint) != 1 || info.Config.Entrypoint[0] != stepd.Target {
		t.Errorf("entrypoint = %q, want the step server", info.Config.Entrypoint)
	}
	logs, _ := exec.Command("docker", "logs", c.ID()).CombinedOutput()
	if strings.Contains(string(logs), marker) {
		t.Errorf("docker logs shows step output: %q", logs)
	}
	if info.LogPath != "" {
		t.Errorf("the engine keeps a log file %s", info.LogPath)
	}
}

// Job code runs as the step server's user, yet cannot open the server's
// descriptors or memory through /proc: a forged frame (a fake exit code
// for a later step) is not possible. Checked as the image's root (no
// capabilities) and as a named user.
func TestStepServerNotReachableFromJob(t *testing.T) {
	e, runner := newTestExecutor(t)
	for _, user := range []string{"", "build"} {
		t.Run("user="+user, func(t *testing.T) {
			c, err := e.Create(context.Background(), executors.Spec{
				RunnerID: runner, JobID: "forge-" + user, Image: testenv.TestImage, Pull: executors.PullNever, WorkDir: "/builds", User: user,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Destroy(context.Background())
			script := `for p in /proc/[0-9]*; do
  if [ "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" = "` + stepd.Target + ` " ]; then srv=$p; fi
done
[ -n "$srv" ] || { echo "no server found"; exit 2; }
echo found
(printf 'X\0\0\0\1\0\0\0\x0b{"code":0}' > $srv/fd/1) 2>/dev/null && echo wrote-fd1
(cat $srv/environ > /dev/null) 2>/dev/null && echo read-environ
(head -c1 $srv/mem > /dev/null) 2>/dev/null && echo read-mem
exit 3`
			code, out, errOut := shOut(t, c, user, script)
			if code != 3 || out != "found\n" {
				t.Fatalf("probe of the server from the job: exit %d, stdout %q, stderr %q; want exit 3 and nothing reached", code, out, errOut)
			}
			// The server still answers after the attempt.
			if code, out, _ := shOut(t, c, user, "echo alive"); code != 0 || out != "alive\n" {
				t.Fatalf("after the probe: %d %q", code, out)
			}
		})
	}
}

// A step signalling its own process group (kill 0) ends itself, not the
// server: the next step runs.
func TestStepKillZeroSparesServer(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "killzero")
	if code, _, _ := shOut(t, c, "", "kill 0; sleep 5"); code != 128+15 {
		t.Errorf("kill 0 step exit = %d, want %d", code, 128+15)
	}
	if code, out, _ := shOut(t, c, "", "echo next"); code != 0 || out != "next\n" {
		t.Fatalf("step after kill 0: %d %q", code, out)
	}
}

// Steps run by the server see the image's environment under their own,
// and a command missing from PATH is exit 127 with a message.
func TestStepServerEnvAndMissingCommand(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "srvenv")
	var out syncBuffer
	code, err := c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"sh", "-c", `echo "$PATH|$A|$HOME"`}, Env: []string{"A=1", "PATH=/bin:/usr/bin"}, Stdout: &out,
	})
	if err != nil || code != 0 || out.String() != "/bin:/usr/bin|1|/root\n" {
		t.Errorf("env through the server: %d %v %q", code, err, out.String())
	}
	// An environment larger than one read of the stream (12 × 120 KiB,
	// what execve takes) arrives whole.
	var big []string
	for i := range 12 {
		big = append(big, fmt.Sprintf("BIG%d=%s", i, strings.Repeat(string(rune('a'+i)), 120<<10)))
	}
	out = syncBuffer{}
	code, err = c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"sh", "-c", `echo "${#BIG0} ${#BIG11} ${BIG11%${BIG11#?}}"`}, Env: big, Stdout: &out,
	})
	if err != nil || code != 0 || out.String() != "122880 122880 l\n" {
		t.Errorf("large env through the server: %d %v %q", code, err, out.String())
	}
	var errOut syncBuffer
	code, err = c.Exec(context.Background(), executors.Exec{Cmd: []string{"no-such-command"}, Stderr: &errOut})
	if err != nil || code != 127 || !strings.Contains(errOut.String(), "no-such-command") {
		t.Errorf("missing command: %d %v %q, want 127 and a message naming it", code, err, errOut.String())
	}
}

// A step server that dies ends the exec waiting on it with an error, not
// a hang; Destroy still removes everything.
func TestStepServerDeathFailsExec(t *testing.T) {
	e, runner := newTestExecutor(t)
	c := create(t, e, runner, "srvdeath")
	dc := c.(*Container)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), executors.Exec{Cmd: []string{"sleep", "30"}})
		errc <- err
	}()
	waitFor(t, func() bool { p, _ := dc.jobProcs(); return len(p) > 0 })
	if err := exec.Command("kill", "-KILL", strconv.Itoa(dc.idle)).Run(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "step server") {
			t.Errorf("Exec after the server died = %v, want an error naming the step server", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Exec hung after the step server died")
	}
}

// step_server must be an absolute path to a static executable, or off.
func TestStepServerSetting(t *testing.T) {
	testenv.RequireTestImage(t)
	for _, bad := range []string{"relative/airlock-stepd", "/nonexistent/airlock-stepd", "/bin/sh"} {
		_, err := New(context.Background(), Config{StepServer: bad}, nil)
		if err == nil || !strings.Contains(err.Error(), "docker.step_server") {
			t.Errorf("step_server %q: err = %v, want an error naming docker.step_server", bad, err)
		}
	}
	e, err := New(context.Background(), Config{StepServer: "off"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.stepd != "" {
		t.Errorf("step_server off: server %q", e.stepd)
	}
}

// A step server that cannot serve (here a static binary that is not one:
// busybox, which exits at once) fails Create with an error naming the
// step server and the setting to turn it off, and leaves no container.
func TestStepServerThatDoesNotStart(t *testing.T) {
	// The runner's cleanup asserts that none of its containers is left.
	_, runner := newTestExecutor(t)
	// The test image is built from this static busybox (make testimage).
	bad, err := New(context.Background(), Config{Grace: time.Second, StepServer: "/bin/busybox"}, nil)
	if err != nil {
		t.Fatalf("New with /bin/busybox as the step server: %v", err)
	}
	defer bad.Close()
	_, err = bad.Create(context.Background(), executors.Spec{
		RunnerID: runner, JobID: "badserver", Image: testenv.TestImage, Pull: executors.PullNever, WorkDir: "/builds",
	})
	if err == nil || !strings.Contains(err.Error(), "step server") || !strings.Contains(err.Error(), "step_server") {
		t.Fatalf("Create with a broken step server = %v, want an error naming the step server and step_server", err)
	}
}
