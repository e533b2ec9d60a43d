package runner

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/job"
)

// claim takes a ready sandbox for j's image, or returns nil (the job runs
// cold). A sandbox made from another image than the one the name names
// now (updated by a pull or a tag, or removed) is retired, never claimed.
// pull is the job's first pull policy (execution.pull).
func (p *Pool) claim(ctx context.Context, j *job.Job, pull executors.PullPolicy) *warmSandbox {
	if p == nil {
		return nil
	}
	p.lastClaim.Store(time.Now().UnixNano()) // a job starts: refills wait
	if j.Image == poolNetworks {
		return nil
	}
	p.mu.Lock()
	_, listed := p.want[j.Image]
	n := len(p.ready[j.Image])
	closed := p.closed
	p.mu.Unlock()
	if !listed || closed {
		return nil
	}
	m := p.r.metrics.Load()
	if n > 0 {
		cur, known, err := p.imageNow(ctx, j, pull)
		if err != nil {
			// Not knowing which image the name names, run cold.
			p.log.Warn("cannot tell the image of the warm sandboxes; the job runs cold", "image", j.Image, "error", err)
			n = 0
		} else if known {
			p.retire(j.Image, cur)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var w *warmSandbox
	if n > 0 && !p.closed {
		w = p.takeLocked(j.Image)
	}
	if w == nil {
		p.misses.Add(1)
		m.PoolClaim(j.Image, false)
		p.nudge()
		return nil
	}
	p.hits.Add(1)
	m.PoolClaim(j.Image, true)
	m.PoolReady(j.Image, len(p.ready[j.Image]))
	p.nudge()
	return w
}

// takeLocked takes the first ready sandbox of key that is alive
// (warmSandbox.alive); the dead ones before it are dropped and removed
// in the background. p.mu is held.
func (p *Pool) takeLocked(key string) *warmSandbox {
	ws := p.ready[key]
	var dead []*warmSandbox
	for len(ws) > 0 && !ws[0].alive() {
		dead, ws = append(dead, ws[0]), ws[1:]
	}
	var w *warmSandbox
	if len(ws) > 0 {
		w, ws = ws[0], ws[1:]
	}
	p.ready[key] = ws
	p.dropDeadLocked(key, dead)
	return w
}

// dropDeadLocked removes sandboxes of key found dead, unclaimed, in the
// background. p.mu is held.
func (p *Pool) dropDeadLocked(key string, dead []*warmSandbox) {
	if len(dead) == 0 {
		return
	}
	p.dead.Add(int64(len(dead)))
	m := p.r.metrics.Load()
	m.PoolDead(key, len(dead))
	m.PoolReady(key, len(p.ready[key]))
	p.log.Warn("warm sandboxes died before a job claimed them; removing them", "image", key, "sandboxes", len(dead))
	p.discard(dead)
	p.nudge()
}

// countDead counts a sandbox of key a job claimed alive and found dead
// before it could use it.
func (p *Pool) countDead(key string) {
	if p == nil {
		return
	}
	p.dead.Add(1)
	p.r.metrics.Load().PoolDead(key, 1)
}

// sweepDead drops every ready sandbox found dead.
func (p *Pool) sweepDead() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, ws := range p.ready {
		var keep, dead []*warmSandbox
		for _, w := range ws {
			if w.alive() {
				keep = append(keep, w)
			} else {
				dead = append(dead, w)
			}
		}
		if len(dead) > 0 {
			p.ready[key] = keep
			p.dropDeadLocked(key, dead)
		}
	}
}

// alive reports whether the sandbox can still serve a job: its container
// or its holder runs (executors.Liveness), its namespace is there.
func (w *warmSandbox) alive() bool {
	for _, x := range []any{w.ctr, w.holder} {
		if l, ok := x.(executors.Liveness); ok && !l.Alive() {
			return false
		}
	}
	if w.netns != "" {
		if _, err := os.Stat(w.netns); err != nil {
			return false
		}
	}
	return true
}

// claimNet takes a network-only sandbox (PoolConfig.Networks) for a job
// that claimed no warm sandbox, or returns nil (its network is made on
// its path).
func (p *Pool) claimNet() *warmSandbox {
	if p == nil {
		return nil
	}
	p.lastClaim.Store(time.Now().UnixNano())
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.want[poolNetworks] == 0 {
		return nil
	}
	m := p.r.metrics.Load()
	w := p.takeLocked(poolNetworks)
	if w == nil {
		p.netMisses.Add(1)
		m.PoolClaim(poolNetworks, false)
		p.nudge()
		return nil
	}
	p.netHits.Add(1)
	m.PoolClaim(poolNetworks, true)
	m.PoolReady(poolNetworks, len(p.ready[poolNetworks]))
	p.nudge()
	return w
}

// imageNow is the ID of the image j's would be made from now: under pull
// policy "always" (pull, the job's), or when j has credentials for its image's registry,
// the one pulled for it now with them (a failed pull is an error: the job
// runs cold and its Create reports it); else the one its name names here
// (imageHere).
func (p *Pool) imageNow(ctx context.Context, j *job.Job, pull executors.PullPolicy) (id string, known bool, err error) {
	auths := registryAuth(j)
	// A job with credentials for its image's registry pulls it with them,
	// as its Create would (the registry decides whether it may have it):
	// a sandbox made without them is no way around that.
	own := executors.AuthFor(executors.RegistryHost(j.Image), auths) != nil
	if pull != executors.PullAlways && !own {
		return p.imageHere(ctx, j.Image)
	}
	puller, ok := p.r.exec.(executors.ImagePuller)
	if !ok {
		return "", false, errors.New("the executor cannot pull an image for a job")
	}
	t0 := time.Now()
	id, err = puller.PullImage(ctx, j.Image, auths)
	if err != nil {
		return "", false, err
	}
	p.log.Debug("pulled the image of a job that claims a warm sandbox", "image", j.Image, "took", time.Since(t0))
	return id, true, nil
}

// imageHere is the ID of the image that name names in the executor's
// store now; known is false when the executor cannot tell (no
// executors.ImageIdentifier). A name that names nothing any more is known
// with an empty ID.
func (p *Pool) imageHere(ctx context.Context, image string) (id string, known bool, err error) {
	ii, ok := p.r.exec.(executors.ImageIdentifier)
	if !ok {
		return "", false, nil
	}
	id, err = ii.ImageID(ctx, image)
	if errors.Is(err, executors.ErrImageNotFound) {
		return "", true, nil
	}
	return id, err == nil, err
}

// retire removes the ready sandboxes of image not made from the image
// with ID cur, in the background, and has the pool refill.
func (p *Pool) retire(image, cur string) {
	p.mu.Lock()
	var keep, stale []*warmSandbox
	for _, w := range p.ready[image] {
		if w.imageID == "" || w.imageID == cur {
			keep = append(keep, w)
		} else {
			stale = append(stale, w)
		}
	}
	if len(stale) > 0 {
		p.ready[image] = keep
	}
	p.mu.Unlock()
	if len(stale) == 0 {
		return
	}
	p.retired.Add(int64(len(stale)))
	m := p.r.metrics.Load()
	m.PoolRetired(image, len(stale))
	m.PoolReady(image, len(keep))
	p.log.Info("retiring warm sandboxes of an updated image", "image", image, "sandboxes", len(stale), "image_id", cur)
	p.discard(stale)
	p.nudge()
}

// discard removes unclaimed sandboxes in the background (Close waits).
func (p *Pool) discard(ws []*warmSandbox) {
	for _, w := range ws {
		p.bg.Go(func() {
			if err := p.destroy(context.Background(), w); err != nil {
				p.log.Error("removing a warm sandbox", "sandbox", w.id, "error", err)
			}
		})
	}
}
