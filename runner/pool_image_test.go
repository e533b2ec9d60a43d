package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/images"
	"github.com/containerd/errdefs"
	dockerclient "github.com/docker/docker/client"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/containerd"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/internal/testenv/registry"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// retagImage makes name name the image to, in the store the runner's
// executor takes images from (Docker's, or its containerd namespace, into
// which to is imported from Docker), as a pull of an updated image would.
func retagImage(t *testing.T, cfg *config.Config, name, to string) {
	t.Helper()
	if cfg.ExecutorName() != config.ExecutorContainerd {
		if out, err := exec.Command("docker", "tag", to, name).CombinedOutput(); err != nil {
			t.Fatalf("docker tag: %v: %s", err, out)
		}
		return
	}
	cli, ctx, done, err := isoContainerdClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	dc, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	rc, err := dc.ImageSave(ctx, []string{to})
	if err != nil {
		t.Fatal(err)
	}
	imported, err := cli.Import(ctx, rc)
	rc.Close()
	if err != nil || len(imported) == 0 {
		t.Fatalf("importing %s: %v, %d images", to, err, len(imported))
	}
	full, err := containerd.NormalizeImage(name)
	if err != nil {
		t.Fatal(err)
	}
	img := images.Image{Name: full, Target: imported[0].Target}
	_, err = cli.ImageService().Update(ctx, img, "target")
	if errdefs.IsNotFound(err) {
		_, err = cli.ImageService().Create(ctx, img)
	}
	if err != nil {
		t.Fatalf("naming %s %s in containerd: %v", to, name, err)
	}
}

// TestPoolRetiresUpdatedImage: a warm sandbox made from an image whose
// name has since been given another image (an admin pulled an update) is
// never claimed: the job runs cold on the new image, the sandbox is
// retired and the pool refills with the new one; between jobs, the
// pool's check retires and replaces them too. The pool's metrics count
// it all.
func TestPoolRetiresUpdatedImage(t *testing.T) { isoEachExecutor(t, testPoolRetiresUpdatedImage) }

func testPoolRetiresUpdatedImage(t *testing.T) {
	env := isoOpen(t)
	m := NewMetrics()
	env.r.SetMetrics(m)
	oldImg := testenv.VariantImage(t, "AIRLOCK_VARIANT=old")
	newImg := testenv.VariantImage(t, "AIRLOCK_VARIANT=new")
	pooled := testenv.VariantImage(t, "AIRLOCK_VARIANT=old") // the name jobs use
	if env.cfg.ExecutorName() == config.ExecutorContainerd {
		retagImage(t, env.cfg, pooled, oldImg) // imported, as a pull would
	}
	start := func(check time.Duration) *Pool {
		t.Helper()
		saved := poolCheckEvery
		poolCheckEvery = check
		defer func() { poolCheckEvery = saved }()
		p := isoPool(t, env, PoolConfig{Sizes: map[string]int{pooled: 1}})
		isoWaitReady(t, p)
		return p
	}
	runJob := func(id, want string) { t.Helper(); runVariantJob(t, env, pooled, id, want) }

	// The claim's own check (the pool's is an hour away).
	p := start(time.Hour)
	retagImage(t, env.cfg, pooled, newImg)
	runJob("upd-1", "new")
	if st := p.Stats(); st.Hits != 0 || st.Misses != 1 || st.Retired != 1 {
		t.Errorf("after the update: %+v, want the stale sandbox retired and the job cold (1 miss)", st)
	}
	isoWaitReady(t, p)
	runJob("upd-2", "new")
	if st := p.Stats(); st.Hits != 1 || st.Retired != 1 {
		t.Errorf("after the refill: %+v, want a hit", st)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Between jobs: the pool's own check, with no job asking.
	p = start(50 * time.Millisecond)
	retagImage(t, env.cfg, pooled, oldImg)
	deadline := time.Now().Add(time.Minute)
	for p.Stats().Retired < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the pool's check never retired the stale sandbox: %+v", p.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	isoWaitReady(t, p)
	runJob("upd-3", "old")
	if st := p.Stats(); st.Hits != 1 || st.Misses != 0 || st.Retired != 1 {
		t.Errorf("after the check: %+v, want the refilled sandbox claimed", st)
	}
	isoWaitReady(t, p)
	metrics := scrapeMetrics(t, m)
	for _, want := range []string{
		`airlock_pool_claims_total{image="` + pooled + `",result="hit"} 2`,
		`airlock_pool_claims_total{image="` + pooled + `",result="miss"} 1`,
		`airlock_pool_retired_total{image="` + pooled + `"} 2`,
		`airlock_pool_ready{image="` + pooled + `"} 1`,
		`airlock_pool_claim_seconds_count 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s:\n%s", want, testenv.GrepLines(metrics, "airlock_pool_"))
		}
	}
}

// runVariantJob runs job id of image and checks that it ran on the
// VariantImage whose AIRLOCK_VARIANT is want.
func runVariantJob(t *testing.T, env *isoEnv, image, id, want string) {
	t.Helper()
	j := &job.Job{ID: id, Source: job.SourceLocal, Repo: isoRepo, Image: image, Timeout: time.Minute,
		Steps: []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{`echo "variant=$AIRLOCK_VARIANT"`}}}}
	var out bytes.Buffer
	res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
	if err != nil || res.State != Success {
		t.Fatalf("job %s: %v, %+v\n%s", id, err, res, out.String())
	}
	if !strings.Contains(out.String(), "variant="+want+"\n") {
		t.Errorf("job %s ran on the wrong image, want variant=%s:\n%s", id, want, out.String())
	}
}

// A job with credentials for its image's registry claims a warm sandbox
// of that image only once the registry gave them the image: a sandbox
// made from a local copy is no way around the registry's refusal (with
// wrong credentials the job fails as its cold Create would), and the
// right ones claim it.
func TestPoolPrivateImageNeedsTheJobsPull(t *testing.T) {
	isoEachExecutor(t, testPoolPrivateImageNeedsTheJobsPull)
}

func testPoolPrivateImageNeedsTheJobsPull(t *testing.T) {
	reg := registry.Require(t)
	img := testenv.VariantImage(t, "AIRLOCK_VARIANT=private")
	ref := reg.Push(t, img, "ci/private:1")
	// A local copy under the registry's name, as an admin's pull leaves.
	if out, err := exec.Command("docker", "tag", img, ref).CombinedOutput(); err != nil {
		t.Fatalf("docker tag: %v: %s", err, out)
	}
	env := isoOpenWith(t, func(cfg *config.Config) {
		cfg.Docker.Pull = string(executors.PullIfNotPresent)
		cfg.Containerd.Pull = string(executors.PullIfNotPresent)
	})
	p := isoPool(t, env, PoolConfig{Sizes: map[string]int{ref: 1}})
	isoWaitReady(t, p)
	run := func(id, password string) (*Result, string) {
		t.Helper()
		j := &job.Job{ID: id, Source: job.SourceLocal, Repo: isoRepo, Image: ref, Timeout: time.Minute,
			RegistryAuth: []job.RegistryAuth{{Registry: reg.Host, Username: reg.Username, Password: password}},
			Steps:        []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{`echo "variant=$AIRLOCK_VARIANT"`}}}}
		var out bytes.Buffer
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		return res, out.String()
	}
	if res, out := run("wrong-password", "not-"+reg.Password); res.State == Success || strings.Contains(out, "variant=private") {
		t.Errorf("a job the registry refuses ran on the private image: %s (%s)\n%s", res.State, res.Reason, out)
	}
	if st := p.Stats(); st.Hits != 0 {
		t.Errorf("the refused job claimed the warm sandbox: %+v", st)
	}
	if res, out := run("right-password", reg.Password); res.State != Success || !strings.Contains(out, "variant=private\n") {
		t.Errorf("a job with the right credentials: %s (%s)\n%s", res.State, res.Reason, out)
	}
}

// TestPoolRecentImages: with recent = 1 and no image listed, an image two
// jobs used gets a warm sandbox, which the next job of it claims.
func TestPoolRecentImages(t *testing.T) { isoEachExecutor(t, testPoolRecentImages) }

func testPoolRecentImages(t *testing.T) {
	env := isoOpen(t)
	history := filepath.Join(t.TempDir(), "pool-recent.json")
	p := isoPool(t, env, PoolConfig{Recent: 1, HistoryFile: history})
	for i := range 3 {
		if i == 2 {
			isoWaitReady(t, p)
			if st := p.Stats(); st.Ready[testenv.TestImage] != 1 {
				t.Fatalf("after two jobs of %s: %+v, want one sandbox of it ready", testenv.TestImage, st)
			}
		}
		j := &job.Job{ID: fmt.Sprintf("recent-%d", i), Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute,
			Steps: []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{`echo "job=$CI_JOB_ID"`}}}}
		var out bytes.Buffer
		res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
		if err != nil || res.State != Success || !strings.Contains(out.String(), "job="+j.ID) {
			t.Fatalf("job %s: %v, %+v\n%s", j.ID, err, res, out.String())
		}
	}
	// The first job's image was not kept yet (not counted), the second's
	// found none ready (a miss), the third claimed the sandbox.
	if st := p.Stats(); st.Hits != 1 || st.Misses != 1 {
		t.Errorf("pool stats = %+v, want 1 hit and 1 miss", st)
	}

	// After a restart the counts are those of before (saved at Close):
	// the image is kept before any job of it came.
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	p = isoPool(t, env, PoolConfig{Recent: 1, HistoryFile: history})
	isoWaitReady(t, p)
	if st := p.Stats(); st.Ready[testenv.TestImage] != 1 {
		t.Errorf("after a restart: %+v, want the recent image's sandbox ready", st)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	// A file that is not one is kept aside, and counting starts over.
	if err := os.WriteFile(history, []byte(`{"version":1,"images":["ok","bad name"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	p = isoPool(t, env, PoolConfig{Recent: 1, HistoryFile: history})
	if st := p.Stats(); len(st.Ready) != 0 || p.want[testenv.TestImage] != 0 {
		t.Errorf("with a corrupt file: %+v, want nothing kept", st)
	}
	if b, err := os.ReadFile(history + ".corrupt"); err != nil || !strings.Contains(string(b), "bad name") {
		t.Errorf("the corrupt file was not kept aside: %q, %v", b, err)
	}
}

func TestLoadHistory(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ content, want, wantErr string }{
		{`{"version":1,"images":["a","b:1","a"]}`, "a b:1 a", ""},
		{`{"version":2,"images":[]}`, "", "version 2, want 1"},
		{`{"version":1,"images":[""]}`, "", `images[0] "" is not an image name`},
		{`{"version":1,"images":["a\nb"]}`, "", `images[0] "a\nb" is not an image name`},
		{`not json`, "", "invalid character"},
	} {
		p := filepath.Join(dir, "h.json")
		if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := loadHistory(p)
		switch {
		case tc.wantErr == "" && (err != nil || strings.Join(h, " ") != tc.want):
			t.Errorf("%s: %q, %v; want %q", tc.content, h, err, tc.want)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), p)):
			t.Errorf("%s: error %v, want one naming %s and %q", tc.content, err, p, tc.wantErr)
		}
	}
	if h, err := loadHistory(filepath.Join(dir, "none")); err != nil || h != nil {
		t.Errorf("no file: %q, %v; want none", h, err)
	}
	many := make([]string, 150)
	for i := range many {
		many[i] = fmt.Sprintf("img%d", i)
	}
	b, _ := json.Marshal(historyFormat{Version: 1, Images: many})
	p := filepath.Join(dir, "many.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if h, err := loadHistory(p); err != nil || len(h) != recentWindow || h[0] != "img50" {
		t.Errorf("150 entries: %d kept from %q, %v; want the last %d", len(h), h[0], err, recentWindow)
	}
}

// TestPoolPullAlways: under pull policy "always" a job that would claim a
// warm sandbox pulls its image first, as its Create would: while the
// registry has the image the sandbox was made from, the job claims it;
// once an update was pushed under the same name, the job runs cold on
// the update, the stale sandbox is retired and the pool refills with it.
func TestPoolPullAlways(t *testing.T) { isoEachExecutor(t, testPoolPullAlways) }

func testPoolPullAlways(t *testing.T) {
	reg := registry.RequireOpen(t)
	oldImg := testenv.VariantImage(t, "AIRLOCK_VARIANT=old")
	newImg := testenv.VariantImage(t, "AIRLOCK_VARIANT=new")
	ref := reg.Push(t, oldImg, "ci/build:1")
	env := isoOpenWith(t, func(cfg *config.Config) {
		cfg.Docker.Pull = string(executors.PullAlways)
		cfg.Containerd.Pull = string(executors.PullAlways)
	})
	p := isoPool(t, env, PoolConfig{Sizes: map[string]int{ref: 1}})
	waitReady := func() { t.Helper(); isoWaitReady(t, p) }
	runJob := func(id, want string) { t.Helper(); runVariantJob(t, env, ref, id, want) }
	waitReady()
	runJob("always-1", "old")
	if st := p.Stats(); st.Hits != 1 || st.Retired != 0 {
		t.Errorf("with the registry unchanged: %+v, want a hit", st)
	}
	waitReady()
	reg.Push(t, newImg, "ci/build:1")
	runJob("always-2", "new")
	if st := p.Stats(); st.Hits != 1 || st.Misses != 1 || st.Retired != 1 {
		t.Errorf("after an update was pushed: %+v, want the stale sandbox retired and the job cold", st)
	}
	waitReady()
	runJob("always-3", "new")
	if st := p.Stats(); st.Hits != 2 {
		t.Errorf("after the refill: %+v, want a hit", st)
	}
}
