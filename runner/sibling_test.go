package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// siblingDriver runs three steps: one in the job's container that
// leaves files, one in a container of its own (ExecContainer) that
// reads and changes them and probes the network, and one in the job's
// container again that shows what came back.
type siblingDriver struct {
	x      job.ContainerExec
	during func() // called when the sibling's command first writes
	codes  []int
}

var siblingSteps = []string{
	`mkdir -p ws/sub /tmp/extra && echo from-job > ws/in.txt && echo nested > ws/sub/n.txt && echo extra > /tmp/extra/e.txt && echo "@@ jobns $(readlink /proc/self/ns/net)"`,
	"", // the sibling
	`echo "@@ back $(cat ws/out.txt) $(cat ws/sub/n.txt) in=$(test -e ws/in.txt && echo kept || echo gone) extra=$(cat /tmp/extra/e.txt)"`,
}

func (d *siblingDriver) Begin(ctx context.Context, h StepHost) error { return nil }
func (d *siblingDriver) Len() int                                    { return len(siblingSteps) }
func (d *siblingDriver) Name(i int) string                           { return fmt.Sprintf("step-%d", i) }
func (d *siblingDriver) Decide(ctx context.Context, i int, st job.RunStatus) (bool, error) {
	return true, nil
}
func (d *siblingDriver) End(ctx context.Context, st job.RunStatus, h StepHost) error { return nil }

func (d *siblingDriver) Run(ctx context.Context, i int, h StepHost) (job.StepResult, bool) {
	if i != 1 {
		code, err := h.Exec(ctx, job.StepExec{Cmd: []string{"/bin/sh", "-c", siblingSteps[i]}})
		d.codes = append(d.codes, code)
		return job.StepResult{ExitCode: code, Err: err}, code != 0
	}
	ch, ok := h.(job.ContainerStepHost)
	if !ok {
		return job.StepResult{ExitCode: -1, Err: fmt.Errorf("the step host cannot run a container step")}, true
	}
	x := d.x
	x.Stdout = &firstWrite{w: h.Log(), fn: d.during}
	x.In = []job.DirCopy{{From: h.WorkDir() + "/ws", To: "/github/workspace"}, {From: "/tmp/extra", To: "/github/extra"}}
	x.Out = []job.DirCopy{{From: "/github/workspace", To: h.WorkDir() + "/ws"}, {From: "/github/extra", To: "/tmp/extra"}}
	code, err := ch.ExecContainer(ctx, x)
	d.codes = append(d.codes, code)
	return job.StepResult{ExitCode: code, Err: err}, err != nil
}

// firstWrite calls fn before the first write reaches w.
type firstWrite struct {
	w    interface{ Write([]byte) (int, error) }
	fn   func()
	once sync.Once
}

func (f *firstWrite) Write(p []byte) (int, error) {
	if f.fn != nil {
		f.once.Do(f.fn)
	}
	return f.w.Write(p)
}

// A step in a container of its own image joins the job's network
// namespace (the job's egress policy holds there), gets the job's files
// and gives its changes back, runs with the step's environment, is
// labelled as the job's (recovery would find it) and is gone after.
func TestExecContainer(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		env := isoOpen(t, isoEgress...)
		j := env.withCA(isoJob("sibling", isoEgress, nil))
		script := strings.Join([]string{
			`echo "@@ sibns $(readlink /proc/self/ns/net)"`,
			`echo "@@ where $(pwd) home=$HOME var=$SIB_VAR"`,
			`echo "@@ got $(cat in.txt) $(cat ../extra/e.txt)"`,
			`echo "@@ allowed $(probe http https://api.allowed.test/ --ca "$FAKE_CA" 2>&1 | tail -n 1)"`,
			`echo "@@ forbidden $(probe tcp ` + testenv.ForbiddenAddr.String() + `:7 2>&1 | tail -n 1)"`,
			`echo "@@ dirs $(test -d /github/home && echo home-ok)"`,
			`rm in.txt && echo from-sibling > out.txt && echo changed > sub/n.txt && echo extra-back > ../extra/e.txt`,
			`exit 7`,
		}, "\n")
		var during []string
		d := &siblingDriver{
			x: job.ContainerExec{
				Name:       "probe-1",
				Image:      testenv.TestImage,
				Entrypoint: []string{"/bin/sh"},
				Args:       []string{"-c", script},
				Env:        []string{"SIB_VAR=sibling-value", "HOME=/github/home"},
				Root:       "/github",
				WorkDir:    "/github/workspace",
				Dirs:       []string{"/github/home"},
			},
			during: func() { during = isoLeftovers(t, env.runnerID, env.cfg) },
		}
		var out isoOutput
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out, Driver: d, AwaitAudit: true})
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		run := isoParse(t, res, out.String())
		if len(d.codes) != 3 || d.codes[1] != 7 || d.codes[2] != 0 {
			t.Fatalf("step exit codes %v, want [0 7 0] (the sibling's own code comes back)\n%s", d.codes, run.out)
		}
		if js, ss := run.probe(t, "jobns"), run.probe(t, "sibns"); js == "" || js != ss {
			t.Errorf("the sibling's network namespace %q is not the job's %q", ss, js)
		}
		for name, want := range map[string]string{
			"where":     "/github/workspace home=/github/home var=sibling-value",
			"got":       "from-job extra",
			"forbidden": "fail",
			"dirs":      "home-ok",
			"back":      "from-sibling changed in=gone extra=extra-back",
		} {
			if got := run.probe(t, name); !strings.HasPrefix(got, want) {
				t.Errorf("probe %s = %q, want %q", name, got, want)
			}
		}
		if got := run.probe(t, "allowed"); !strings.HasPrefix(got, "ok status=200") {
			t.Errorf("allowed host from the sibling: %q, want ok status=200 (the job's gateway serves it)", got)
		}
		var recs []audit.Record
		for _, rec := range run.records {
			if rec.Type == audit.StepContainer {
				recs = append(recs, rec)
			}
		}
		if len(recs) != 1 || recs[0].String(audit.FieldStep) != "step-1" || recs[0].String(audit.FieldImage) != testenv.TestImage ||
			recs[0].String(audit.FieldName) != "probe-1" || !strings.HasPrefix(recs[0].String(audit.FieldImageID), "sha256:") {
			t.Errorf("step_container records %+v, want one naming step-1, probe-1, the image and its id", recs)
		}
		var containers int
		for _, l := range during {
			if strings.HasPrefix(l, "container ") {
				containers++
			}
		}
		if containers < 2 {
			t.Errorf("while the sibling ran, the runner's labelled containers were %v: want the job's and the sibling's", during)
		}
		if strings.Contains(run.out, "sibling-value") && !strings.Contains(run.out, "var=sibling-value") {
			t.Errorf("the step's environment leaked into the log:\n%s", run.out)
		}
	})
}

// A sibling whose image is not there fails the step with the image
// named, and nothing is left.
func TestExecContainerMissingImage(t *testing.T) {
	env := isoOpen(t)
	j := isoJob("sibling-missing", nil, nil)
	d := &siblingDriver{x: job.ContainerExec{Name: "x", Image: "airlock-test:absent-" + fmt.Sprint(time.Now().UnixNano()),
		Root: "/github", WorkDir: "/github/workspace"}}
	var out isoOutput
	res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out, Driver: d})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(d.codes) < 2 || d.codes[1] != -1 || res.State == Success {
		t.Fatalf("codes %v state %s, want the container step to fail\n%s", d.codes, res.State, out.String())
	}
	if !strings.Contains(out.String(), "airlock-test:absent-") {
		t.Errorf("the log does not name the missing image:\n%s", out.String())
	}
}

// Collect's fetch copies the job's files out with either executor
// (GitLab artifacts and caches): content, mode and symlinks as links; a
// missing path is fs.ErrNotExist.
func TestCollectFetchEachExecutor(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		env := isoOpen(t)
		j := isoJob("fetch", nil, []isoProbe{{cmd: `mkdir -p out/d && echo hello > out/d/a.txt && printf '#!/bin/sh\n' > out/run.sh && chmod 755 out/run.sh && ln -s /etc/shadow out/x`}})
		dst := t.TempDir()
		var fetchErr, missingErr error
		collect := func(ctx context.Context, st job.State, fetch func(ctx context.Context, rel, dst string) error, out io.Writer) error {
			fetchErr = fetch(ctx, "out", dst)
			missingErr = fetch(ctx, "absent", dst)
			return nil
		}
		var out isoOutput
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out, Collect: collect})
		if err != nil || res.State != Success {
			t.Fatalf("Run: %v, state %s (%v)\n%s", err, res.State, res.Err, out.String())
		}
		if fetchErr != nil {
			t.Fatalf("fetch(out): %v", fetchErr)
		}
		if !errors.Is(missingErr, fs.ErrNotExist) {
			t.Errorf("fetch(absent) = %v, want fs.ErrNotExist", missingErr)
		}
		if b, err := os.ReadFile(filepath.Join(dst, "out/d/a.txt")); err != nil || string(b) != "hello\n" {
			t.Errorf("out/d/a.txt = %q, %v", b, err)
		}
		if fi, err := os.Stat(filepath.Join(dst, "out/run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("out/run.sh: %v %v, want mode 0755", fi, err)
		}
		if l, err := os.Readlink(filepath.Join(dst, "out/x")); err != nil || l != "/etc/shadow" {
			t.Errorf("out/x = %q, %v, want the link itself", l, err)
		}
	})
}

// allowed_images and allowed_services (config.toml, through the wiring)
// refuse a job whose image or service image they do not match before
// anything of it exists, and a step's own container of another image;
// a matching job runs.
func TestAllowedImages(t *testing.T) {
	env := isoOpenWith(t, func(c *config.Config) {
		c.Docker.AllowedImages = []string{"airlock-test:busy*"}
		c.Docker.AllowedServices = []string{"postgres:*"}
	})
	run := func(j *job.Job, d StepDriver) (*Result, string) {
		var out isoOutput
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out, Driver: d})
		if err != nil {
			t.Fatalf("Run(%s): %v", j.ID, err)
		}
		return res, out.String()
	}
	ok := isoJob("allowed", nil, []isoProbe{{cmd: "echo ran-allowed"}})
	if res, out := run(ok, nil); res.State != Success || !strings.Contains(out, "ran-allowed") {
		t.Errorf("a matching job: %s (%v)\n%s", res.State, res.Err, out)
	}
	img := isoJob("img", nil, []isoProbe{{cmd: "echo must-not-run"}})
	img.Image = "airlock-test:other"
	svc := isoJob("svc", nil, []isoProbe{{cmd: "echo must-not-run"}})
	svc.Services = []job.Service{{Image: testenv.TestImage, Aliases: []string{"db"}}}
	for _, tc := range []struct {
		j    *job.Job
		want string
	}{
		{img, `image "airlock-test:other" is not allowed on this runner (allowed_images: airlock-test:busy*`},
		{svc, `services[0] image "airlock-test:busybox" is not allowed on this runner (allowed_services: postgres:*)`},
	} {
		res, out := run(tc.j, nil)
		if res.State != Failed || res.Reason != Unauthorized || !strings.Contains(out, tc.want) || strings.Contains(out, "must-not-run") {
			t.Errorf("job %s: %s/%s (%v), want refused with %q\n%s", tc.j.ID, res.State, res.Reason, res.Err, tc.want, out)
		}
	}
	d := &siblingDriver{x: job.ContainerExec{Name: "x", Image: "airlock-test:other", Root: "/github", WorkDir: "/github"}}
	res, out := run(isoJob("sib", nil, nil), d)
	if len(d.codes) < 2 || d.codes[1] != -1 || res.State == Success || !strings.Contains(out, `image "airlock-test:other" is not allowed on this runner (allowed_images`) {
		t.Errorf("a step's container of an image not allowed: codes %v, %s\n%s", d.codes, res.State, out)
	}
}
