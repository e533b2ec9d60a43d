package containerd

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/snapshots"
	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
)

func testSpec(job string) executors.Spec {
	return executors.Spec{RunnerID: "rtest01", JobID: job, Image: testenv.TestImage, WorkDir: "/builds"}
}

func run(t *testing.T, c executors.Container, script string, env ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	code, err := c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"/bin/sh", "-c", script}, Env: env, Stdout: &out, Stderr: &out,
	})
	if err != nil {
		t.Fatalf("Exec(%q): %v", script, err)
	}
	return code, out.String()
}

func create(t *testing.T, e *Executor, spec executors.Spec) *Container {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := e.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Destroy(context.Background()); err != nil {
			t.Errorf("Destroy: %v", err)
		}
	})
	return c.(*Container)
}

func TestExecEnvStdinExitCode(t *testing.T) {
	e := newTestExecutor(t, nil)
	c := create(t, e, testSpec("env"))
	const secret = "s3cr3t-value-4711"
	code, out := run(t, c, `echo "v=$TOKEN"; pwd; exit 3`, "TOKEN="+secret)
	if code != 3 || !strings.Contains(out, "v="+secret) || !strings.Contains(out, "/builds") {
		t.Fatalf("exec = %d, %q; want 3 with v=%s and /builds", code, out, secret)
	}
	var buf bytes.Buffer
	code, err := c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"/bin/sh"}, Stdin: strings.NewReader("echo from-stdin\nexit 0\n"), Stdout: &buf,
	})
	if err != nil || code != 0 || strings.TrimSpace(buf.String()) != "from-stdin" {
		t.Fatalf("stdin exec = %d, %v, %q", code, err, buf.String())
	}
	// A script without an exit reads stdin to its end: the shim must see EOF.
	buf.Reset()
	code, err = c.Exec(context.Background(), executors.Exec{
		Cmd: []string{"/bin/sh"}, Stdin: strings.NewReader("echo eof-ok\n"), Stdout: &buf,
	})
	if err != nil || code != 0 || strings.TrimSpace(buf.String()) != "eof-ok" {
		t.Fatalf("stdin-to-EOF exec = %d, %v, %q", code, err, buf.String())
	}

	// Nothing of the exec's environment is in the container's record
	// (what `ctr containers info` shows).
	ctx := e.ctx(context.Background())
	info, err := c.ctr.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(info)
	if bytes.Contains(b, []byte(secret)) || bytes.Contains(b, []byte("TOKEN")) {
		t.Fatalf("container info shows the exec's environment: %s", b)
	}
	if info.Labels[executors.LabelRunner] != "rtest01" || info.Labels[executors.LabelJob] != "env" {
		t.Fatalf("labels = %v", info.Labels)
	}
}

func TestHardening(t *testing.T) {
	e := newTestExecutor(t, nil)
	spec := testSpec("hard")
	spec.Limits = executors.Limits{Pids: 77, Memory: 300 << 20, CPUs: 1.5}
	c := create(t, e, spec)
	_, out := run(t, c, `grep -E '^(CapEff|CapBnd|CapPrm|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status`)
	for _, want := range []string{"CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "CapPrm:\t0000000000000000",
		"CapAmb:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(out, want) {
			t.Errorf("/proc/self/status lacks %q:\n%s", want, out)
		}
	}
	// Masked and read-only /proc paths.
	if _, out := run(t, c, `wc -c < /proc/keys; echo x > /proc/sys/kernel/hostname && echo wrote`); strings.Contains(out, "wrote") || !strings.Contains("\n"+out, "\n0\n") {
		t.Errorf("/proc/keys not masked or /proc/sys writable: %q", out)
	}
	// Limits, read from the job's cgroups on the host.
	for file, want := range map[string]string{"pids/pids.max": "77", "memory/memory.limit_in_bytes": fmt.Sprint(300 << 20), "cpu/cpu.cfs_quota_us": "150000"} {
		p := filepath.Join(e.cfg.CgroupRoot, filepath.Dir(file), e.cfg.Namespace, c.id, filepath.Base(file))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("reading %s: %v", p, err)
			continue
		}
		if got := strings.TrimSpace(string(b)); got != want {
			t.Errorf("%s = %s, want %s", p, got, want)
		}
	}
	// No network but lo in a namespace of its own.
	if _, out := run(t, c, `cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '`); strings.TrimSpace(out) != "lo" {
		t.Errorf("interfaces = %q, want only lo", out)
	}
	if _, out := run(t, c, `cat /proc/sys/net/ipv4/ping_group_range`); strings.Join(strings.Fields(out), " ") != "1 0" {
		t.Errorf("ping_group_range = %q", out)
	}
}

func TestReadOnlyRoot(t *testing.T) {
	e := newTestExecutor(t, nil)
	spec := testSpec("ro")
	spec.Limits.ReadOnly = true
	c := create(t, e, spec)
	if code, out := run(t, c, `touch /x 2>&1 && echo wrote-root; touch /tmp/a /builds/b && echo ok`); code != 0 || strings.Contains(out, "wrote-root") || !strings.Contains(out, "ok") {
		t.Fatalf("read-only root: %d %q", code, out)
	}
}

func TestJoinsPrecreatedNetNS(t *testing.T) {
	testenv.RequireRoot(t)
	e := newTestExecutor(t, nil)
	path := testenv.NewNetNS(t, "airlock-ctrd")
	spec := testSpec("netns")
	spec.NetNS = path
	c := create(t, e, spec)
	var want, got syscall.Stat_t
	if err := syscall.Stat(path, &want); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", c.Pid()), &got); err != nil {
		t.Fatal(err)
	}
	if want.Ino != got.Ino {
		t.Fatalf("task's netns inode %d, want the precreated %d", got.Ino, want.Ino)
	}
	if c.NetNS() != path {
		t.Fatalf("NetNS() = %q, want %q", c.NetNS(), path)
	}
}

func TestCancelKillsWholeTree(t *testing.T) {
	e := newTestExecutor(t, nil)
	c := create(t, e, testSpec("kill"))
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	var out syncBuf
	out.onWrite = func() {
		select {
		case <-started:
		default:
			close(started)
		}
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, executors.Exec{
			Cmd:    []string{"/bin/sh", "-c", `trap '' TERM; (trap '' TERM; sleep 1000) & setsid sleep 1000 & echo up; wait`},
			Stdout: &out, Grace: 300 * time.Millisecond,
		})
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("exec did not start")
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Exec after cancel = %v, want context.Canceled", err)
	}
	pids, err := c.jobPids(e.ctx(context.Background()))
	if err != nil || len(pids) != 0 {
		t.Fatalf("job processes after cancel: %v, %v", pids, err)
	}
	if code, _ := run(t, c, "exit 0"); code != 0 {
		t.Fatalf("container unusable after cancel")
	}
}

func TestMissingImageLeavesNothing(t *testing.T) {
	e := newTestExecutor(t, func(c *Config) { c.DockerHost = NoDocker })
	spec := testSpec("missing")
	spec.Pull = executors.PullNever
	_, err := e.Create(context.Background(), spec)
	if !errors.Is(err, executors.ErrImageNotFound) {
		t.Fatalf("Create = %v, want ErrImageNotFound", err)
	}
	// Cleanup checks that nothing (container, lease, cgroup) is left.
}

func TestDestroyTwiceAndAfterExit(t *testing.T) {
	e := newTestExecutor(t, nil)
	c, err := e.Create(context.Background(), testSpec("twice"))
	if err != nil {
		t.Fatal(err)
	}
	// The task's init dies on its own (here: killed from the host).
	_ = syscall.Kill(c.(*Container).Pid(), syscall.SIGKILL)
	for i := 0; i < 2; i++ {
		if err := c.Destroy(context.Background()); err != nil {
			t.Fatalf("Destroy #%d: %v", i+1, err)
		}
	}
}

func TestReaperRemovesDeadRunnersWork(t *testing.T) {
	e := newTestExecutor(t, nil)
	c, err := e.Create(context.Background(), testSpec("crashed"))
	if err != nil {
		t.Fatal(err)
	}
	other := testSpec("other")
	other.RunnerID = "rother1"
	keep := create(t, e, other)
	// A cgroup without container, as a crash between removals leaves it.
	orphan := ContainerID("rtest01", "orphan")
	for _, d := range e.cgroupDirs(orphan) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A new executor (the restarted runner) finds and removes both.
	e2, err := New(context.Background(), e.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	left, err := e2.Leftovers(context.Background(), "rtest01")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, l := range left {
		ids[l.ID] = true
		if err := e2.RemoveLeftover(context.Background(), l); err != nil {
			t.Fatalf("RemoveLeftover(%s): %v", l.ID, err)
		}
	}
	if len(left) != 2 || !ids[c.ID()] || !ids[orphan] {
		t.Fatalf("Leftovers = %v, want %s and %s only", left, c.ID(), orphan)
	}
	for _, d := range append(e.cgroupDirs(c.ID()), e.cgroupDirs(orphan)...) {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s still there (%v)", d, err)
		}
	}
	// The other runner's container is untouched.
	if code, _ := run(t, keep, "exit 0"); code != 0 {
		t.Fatal("other runner's container broken")
	}
	if err := c.Destroy(context.Background()); err != nil {
		t.Fatalf("Destroy after reaping: %v", err)
	}
}

// syncBuf is a buffer safe for concurrent writes and reads.
type syncBuf struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	onWrite func()
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	n, err := b.buf.Write(p)
	b.mu.Unlock()
	if b.onWrite != nil {
		b.onWrite()
	}
	return n, err
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestReadOnlyFromConfig(t *testing.T) {
	e := newTestExecutor(t, func(c *Config) { c.ReadOnly = true })
	c := create(t, e, testSpec("ro-config"))
	if code, out := run(t, c, `touch /x 2>/dev/null && echo wrote-root; touch /tmp/a /builds/b && echo ok`); code != 0 || strings.Contains(out, "wrote-root") || !strings.Contains(out, "ok") {
		t.Fatalf("read_only = true: %d %q", code, out)
	}
}

// Jobs leave nothing in the store: after the first job imported the
// image, further jobs add no snapshot, no content and no lease.
func TestStoreDoesNotGrowAcrossJobs(t *testing.T) {
	e := newTestExecutor(t, nil)
	ctx := e.ctx(context.Background())
	count := func() (snaps, blobs, leases int) {
		t.Helper()
		if err := e.cli.SnapshotService(e.cfg.Snapshotter).Walk(ctx, func(context.Context, snapshots.Info) error { snaps++; return nil }); err != nil {
			t.Fatal(err)
		}
		if err := e.cli.ContentStore().Walk(ctx, func(content.Info) error { blobs++; return nil }); err != nil {
			t.Fatal(err)
		}
		ls, err := e.cli.LeasesService().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return snaps, blobs, len(ls)
	}
	job := func(id string) {
		c, err := e.Create(context.Background(), testSpec(id))
		if err != nil {
			t.Fatal(err)
		}
		run(t, c, "echo data > /builds/f; echo more > /root-file 2>/dev/null; true")
		if err := c.Destroy(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	job("first")
	s1, b1, l1 := count()
	for _, id := range []string{"second", "third", "fourth"} {
		job(id)
	}
	s2, b2, l2 := count()
	// The collector may still be removing the import's leftovers (fewer
	// blobs later is fine); more is growth.
	if s2 > s1 || b2 > b1 || l1 != 0 || l2 != 0 {
		t.Fatalf("after 1 job: %d snapshots, %d blobs, %d leases; after 4: %d, %d, %d", s1, b1, l1, s2, b2, l2)
	}
}

// A user name in the spec is resolved from the image and serves every
// exec that names it; localhost resolves from a read-only /etc/hosts.
func TestNamedUserAndHosts(t *testing.T) {
	e := newTestExecutor(t, nil)
	spec := testSpec("named-user")
	spec.User = "build"
	c := create(t, e, spec)
	// Stdout and stderr are copied concurrently, so they are kept apart:
	// in one buffer their order is not defined.
	var out, errOut bytes.Buffer
	code, err := c.Exec(context.Background(), executors.Exec{
		Cmd:  []string{"/bin/sh", "-c", `echo "$(id -u):$(id -g)"; grep -c localhost /etc/hosts; (echo x >> /etc/hosts) 2>/dev/null && echo wrote; true`},
		User: "build", Stdout: &out, Stderr: &errOut,
	})
	if err != nil || code != 0 {
		t.Fatalf("exec as build: %d %v %q %q", code, err, out.String(), errOut.String())
	}
	if got := out.String(); got != "1000:1000\n2\n" {
		t.Fatalf("exec as build printed %q (stderr %q), want 1000:1000, two localhost entries and an /etc/hosts it cannot write", got, errOut.String())
	}
	// Not writable even for the container's root: the file is a read-only
	// mount (root without capabilities is refused by its mode first, so
	// the mount's options are what proves it).
	out.Reset()
	errOut.Reset()
	if _, err := c.Exec(context.Background(), executors.Exec{
		Cmd:  []string{"/bin/sh", "-c", `grep ' /etc/hosts ' /proc/self/mountinfo`},
		User: "0", Stdout: &out, Stderr: &errOut,
	}); err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(out.String()); len(f) < 6 || !strings.HasPrefix(f[5], "ro") {
		t.Fatalf("/etc/hosts mount %q (stderr %q), want one with the ro option", out.String(), errOut.String())
	}
	if _, err := c.Exec(context.Background(), executors.Exec{Cmd: []string{"true"}, User: "nobody"}); err == nil {
		t.Fatal("exec as another user name succeeded, want an error naming the rule")
	}
}

// Jobs created at once in a namespace without the image share one import
// from Docker, and every one of them gets a working container.
func TestConcurrentCreatesShareOneImport(t *testing.T) {
	base := newTestExecutor(t, nil)
	var logs syncBuf
	e, err := New(context.Background(), base.cfg, hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const n = 3
	errs := make(chan error, n)
	ctrs := make(chan executors.Container, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			c, err := e.Create(context.Background(), testSpec(fmt.Sprintf("conc-%d", i)))
			if err == nil {
				ctrs <- c
			}
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("Create: %v", err)
		}
	}
	close(ctrs)
	for c := range ctrs {
		if code, _ := run(t, c, "exit 7"); code != 7 {
			t.Errorf("exec in %s = %d, want 7", c.ID(), code)
		}
		if err := c.Destroy(context.Background()); err != nil {
			t.Errorf("Destroy: %v", err)
		}
	}
	imgs, err := e.cli.ImageService().List(e.ctx(context.Background()))
	if err != nil || len(imgs) != 1 {
		t.Fatalf("images after concurrent creates: %v, %v; want one", imgs, err)
	}
	if got := strings.Count(logs.String(), "imported image from Docker"); got != 1 {
		t.Fatalf("%d imports for %d concurrent creates, want 1:\n%s", got, n, logs.String())
	}
}

// Sources copied in land in the work dir, owned by the container's user,
// readable by the steps.
func TestUpload(t *testing.T) {
	e := newTestExecutor(t, nil)
	spec := testSpec("upload")
	spec.User = "1000:1000"
	c := create(t, e, spec)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name, body string
		dir        bool
	}{{name: "src/", dir: true}, {name: "src/main.go", body: "package main\n"}} {
		h := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Uid: 0, Gid: 0}
		if f.dir {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Upload(context.Background(), "/builds", &buf); err != nil {
		t.Fatalf("Upload: %v", err)
	}
	if code, out := run(t, c, `cat /builds/src/main.go; stat -c %u /builds/src/main.go`); code != 0 || out != "package main\n1000\n" {
		t.Fatalf("after Upload: %d %q", code, out)
	}
	if err := c.Upload(context.Background(), "/nonexistent", strings.NewReader("not a tar")); err == nil {
		_, ls := run(t, c, `ls -ld /nonexistent 2>&1; id`)
		t.Fatalf("Upload of garbage into a missing directory succeeded (in the container: %q)", ls)
	}
}

// A command that fails at once reports its failure every time. As task
// execs, containerd 1.6 now and then reports such an exec as 0 (seen about
// once in 300 here): the step server reports the status it reaped itself.
func TestInstantFailuresKeepTheirExitCode(t *testing.T) {
	e := newTestExecutor(t, nil)
	c := create(t, e, testSpec("instant"))
	for i := 0; i < 600; i++ {
		var out bytes.Buffer
		code, err := c.Exec(context.Background(), executors.Exec{
			Cmd: []string{"tar", "-x", "-o", "-f", "-", "-C", "/nonexistent"}, Stdin: strings.NewReader("not a tar"), Stdout: &out, Stderr: &out,
		})
		if err != nil || code == 0 {
			t.Fatalf("exec %d of a failing tar: exit %d, %v, output %q; want a failure", i, code, err, out.String())
		}
	}
}

// A name given another image in the namespace since the executor unpacked
// it (a pull or an import) is what the next Create uses, not the image the
// executor remembered; ImageID and the container's ImageID say which.
func TestImageUpdatedUnderItsName(t *testing.T) {
	e := newTestExecutor(t, nil)
	variant := testenv.VariantImage(t, "AIRLOCK_VARIANT=2")
	ctx := context.Background()
	first := create(t, e, testSpec("upd-1"))
	if id, err := e.ImageID(ctx, testenv.TestImage); err != nil || id != first.ImageID() || id == "" {
		t.Fatalf("ImageID() = %q, %v; the container's is %q", id, err, first.ImageID())
	}
	spec := testSpec("upd-v")
	spec.Image = variant
	v := create(t, e, spec)
	if v.ImageID() == first.ImageID() {
		t.Fatalf("the variant image has the same ID %s", v.ImageID())
	}
	// The test image's name now names the variant, as a pull would do.
	name, _ := NormalizeImage(testenv.TestImage)
	vname, _ := NormalizeImage(variant)
	is := e.cli.ImageService()
	vimg, err := is.Get(e.ctx(ctx), vname)
	if err != nil {
		t.Fatal(err)
	}
	img, err := is.Get(e.ctx(ctx), name)
	if err != nil {
		t.Fatal(err)
	}
	img.Target = vimg.Target
	if _, err := is.Update(e.ctx(ctx), img, "target"); err != nil {
		t.Fatal(err)
	}
	if id, err := e.ImageID(ctx, testenv.TestImage); err != nil || id != v.ImageID() {
		t.Errorf("ImageID() after the update = %q, %v; want the variant's %q", id, err, v.ImageID())
	}
	second := create(t, e, testSpec("upd-2"))
	if second.ImageID() != v.ImageID() {
		t.Errorf("a container made after the update is of image %s, want the variant's %s (the old one is %s)", second.ImageID(), v.ImageID(), first.ImageID())
	}
	if _, out := run(t, second, `echo "variant=$AIRLOCK_VARIANT"`); !strings.Contains(out, "variant=2") {
		t.Errorf("a container made after the update runs the old image: %q", out)
	}
	if _, err := e.ImageID(ctx, "airlock-test:no-such-image"); !errors.Is(err, executors.ErrImageNotFound) {
		t.Errorf("ImageID(missing) = %v, want ErrImageNotFound", err)
	}
}

// An image imported from Docker is imported again once Docker's image of
// that name is another (an admin pulled, built or tagged an update
// there): ImageID says so before (so the pool retires its sandboxes), and
// the next container runs the update; while Docker's stays, nothing is
// imported again.
func TestImageMovedInDocker(t *testing.T) {
	e := newTestExecutor(t, nil)
	a := testenv.VariantImage(t, "AIRLOCK_VARIANT=a")
	b := testenv.VariantImage(t, "AIRLOCK_VARIANT=b")
	name := fmt.Sprintf("airlock-test:moving-%d", os.Getpid())
	tag := func(src string) {
		t.Helper()
		if out, err := exec.Command("docker", "tag", src, name).CombinedOutput(); err != nil {
			t.Fatalf("docker tag: %v: %s", err, out)
		}
	}
	tag(a)
	t.Cleanup(func() { exec.Command("docker", "rmi", name).Run() })
	ctx := context.Background()
	spec := testSpec("moved-1")
	spec.Image = name
	first := create(t, e, spec)
	if _, out := run(t, first, `echo "variant=$AIRLOCK_VARIANT"`); !strings.Contains(out, "variant=a") {
		t.Fatalf("first container: %q", out)
	}
	if id, err := e.ImageID(ctx, name); err != nil || id != first.ImageID() {
		t.Fatalf("ImageID() = %q, %v; the container's is %q", id, err, first.ImageID())
	}

	tag(b)
	if id, err := e.ImageID(ctx, name); err != nil || id == first.ImageID() {
		t.Errorf("ImageID() after Docker's update = %q, %v; want other than %q", id, err, first.ImageID())
	}
	spec.JobID = "moved-2"
	second := create(t, e, spec)
	if _, out := run(t, second, `echo "variant=$AIRLOCK_VARIANT"`); !strings.Contains(out, "variant=b") {
		t.Errorf("a container made after Docker's update runs the old image: %q", out)
	}
	if id, err := e.ImageID(ctx, name); err != nil || id != second.ImageID() || id == first.ImageID() {
		t.Errorf("ImageID() once imported again = %q, %v; want the new container's %q", id, err, second.ImageID())
	}
}

// A Create cancelled at any moment leaves nothing: no container, snapshot
// or task, and no cgroup (the namespace's strict cleanup checks them).
func TestCreateCancelledLeavesNothing(t *testing.T) {
	e := newTestExecutor(t, nil)
	create(t, e, testSpec("cancel-warm")) // the image is unpacked first
	for i, d := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 6 * time.Millisecond, 10 * time.Millisecond,
		15 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond, 45 * time.Millisecond, 70 * time.Millisecond, 100 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		spec := testSpec(fmt.Sprintf("cancel-%d", i))
		c, cerr := e.Create(ctx, spec)
		cancel()
		if cerr == nil {
			if err := c.Destroy(context.Background()); err != nil {
				t.Errorf("Destroy after %s: %v", d, err)
			}
		}
		id := ContainerID(spec.RunnerID, spec.JobID)
		for _, dir := range e.cgroupDirs(id) {
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("Create cancelled after %s (%v): cgroup %s left", d, cerr, dir)
				break
			}
		}
		if _, err := e.cli.LoadContainer(e.ctx(context.Background()), id); err == nil {
			t.Errorf("Create cancelled after %s (%v): container %s left", d, cerr, id)
		}
	}
}
