package runner

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

// A warm sandbox or a pooled network whose container (or Docker holder)
// died before a claim — the engine restarted, an admin removed it, the
// kernel killed it — is never handed to a job: the job runs cold and
// succeeds, the dead ones are removed and the pool refills. Between jobs
// the pool's periodic check finds them too.
func TestPoolDeadSandboxNotClaimed(t *testing.T) { isoEachExecutor(t, testPoolDeadSandboxNotClaimed) }

func testPoolDeadSandboxNotClaimed(t *testing.T) {
	saved := poolCheckEvery
	defer func() { poolCheckEvery = saved }()
	env := isoOpen(t)
	cfg := PoolConfig{Sizes: map[string]int{testenv.TestImage: 1}, Networks: 1}

	// At the claim (the periodic check far off).
	poolCheckEvery = time.Hour
	p := isoPool(t, env, cfg)
	isoWaitReady(t, p)
	killed := isoKillReady(t, env, p, true)
	j := &job.Job{ID: "after-death", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute,
		Steps: []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{"echo ran"}}}}
	var out bytes.Buffer
	res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
	if err != nil || res.State != Success {
		t.Fatalf("job after its sandbox died: state %s (%s), err %v; output:\n%s", res.State, res.Reason, err, out.String())
	}
	st := p.Stats()
	wantNet := int64(1) // containerd's pooled namespace has no process to die
	if killed == 2 {
		wantNet = 0
	}
	if st.Hits != 0 || st.Misses != 1 || st.Dead != int64(killed) || st.NetHits != wantNet || st.NetHits+st.NetMisses != 1 {
		t.Errorf("pool stats %+v, want no hit, 1 miss, %d dead, %d pooled network claimed", st, killed, wantNet)
	}
	isoWaitReady(t, p) // refilled
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Between jobs.
	poolCheckEvery = 100 * time.Millisecond
	p = isoPool(t, env, cfg)
	isoWaitReady(t, p)
	killed = isoKillReady(t, env, p, false)
	deadline := time.Now().Add(30 * time.Second)
	for p.Stats().Dead != int64(killed) {
		if time.Now().After(deadline) {
			t.Fatalf("the pool's check never found the dead sandbox: %+v", p.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	isoWaitReady(t, p)
}

// isoKillReady SIGKILLs the first ready warm sandbox's container (and,
// with holders, the first pooled network's); it returns how many.
func isoKillReady(t *testing.T, env *isoEnv, p *Pool, withNet bool) int {
	t.Helper()
	p.mu.Lock()
	ws := []*warmSandbox{p.ready[testenv.TestImage][0]}
	if n := p.ready[poolNetworks]; withNet && len(n) > 0 && n[0].holder != nil {
		ws = append(ws, n[0])
	}
	p.mu.Unlock()
	for _, w := range ws {
		if w.ctr != nil {
			isoKill(t, env.cfg, w.ctr.ID())
		} else {
			isoKill(t, env.cfg, w.holder.ID())
		}
	}
	return len(ws)
}

// isoKill SIGKILLs a container's init behind the runner's back.
func isoKill(t *testing.T, cfg *config.Config, id string) {
	t.Helper()
	if cfg.ExecutorName() == config.ExecutorContainerd {
		cli, ctx, done, err := isoContainerdClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer done()
		c, err := cli.LoadContainer(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		exited, err := task.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
		return
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cli.ContainerKill(ctx, id, "KILL"); err != nil {
		t.Fatal(fmt.Errorf("killing %s: %w", id, err))
	}
	waitC, errC := cli.ContainerWait(ctx, id, container.WaitConditionNotRunning)
	select {
	case <-waitC:
	case err := <-errC:
		t.Fatal(err)
	}
}

// A network holder that dies after a job claimed it alive and before the
// job's container joined it: the job's network is made on its path and
// the job succeeds; the dead holder is counted and nothing of it stays.
func TestPoolHolderDiesAfterClaim(t *testing.T) {
	env := isoOpen(t) // Docker: containerd's pooled namespaces have no holder
	p := isoPool(t, env, PoolConfig{Networks: 1})
	isoWaitReady(t, p)
	var holder string
	heldNetworkClaimed = func(h executors.Holder) {
		holder = h.ID()
		isoKill(t, env.cfg, h.ID())
		for deadline := time.Now().Add(10 * time.Second); !ended(h); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("holder %s killed, yet alive", h.ID())
				return
			}
		}
	}
	defer func() { heldNetworkClaimed = nil }()
	j := &job.Job{ID: "holder-died", Source: job.SourceLocal, Repo: isoRepo, Image: testenv.TestImage, Timeout: time.Minute,
		Steps: []job.Step{{Name: "s", When: job.OnSuccess, Script: []string{"echo ran"}}}}
	var out bytes.Buffer
	res, err := env.r.Run(context.Background(), j, RunOptions{Out: &out})
	heldNetworkClaimed = nil
	if err != nil || res.State != Success || !strings.Contains(out.String(), "ran") {
		t.Fatalf("job whose holder died: state %s (%s), err %v; output:\n%s", res.State, res.Reason, err, out.String())
	}
	if holder == "" {
		t.Fatal("the job claimed no pooled network")
	}
	if st := p.Stats(); st.NetHits != 1 || st.Dead != 1 {
		t.Errorf("pool stats %+v, want 1 pooled network claimed, 1 dead", st)
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.ContainerInspect(context.Background(), holder); !cerrdefs.IsNotFound(err) {
		t.Errorf("the dead holder %s: inspect error %v, want it removed", holder, err)
	}
}
