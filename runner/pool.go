package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/internal/atomicfile"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/sandbox"
)

// Pool keeps warm sandboxes for the images an admin lists: the container
// created with its idle entrypoint, its namespace plumbed and its
// default-deny firewall in place, its runtime directory mounted — with no
// job policy (the gateway has no listener for it), no credentials and no
// workspace. A job whose image matches claims one in decide: its policy is
// registered, its credentials minted into the runtime directory, its
// sources copied in, and its first step starts without a container or a
// network being made on its path. A sandbox serves exactly one job and is
// destroyed with it; the pool refills in the background.
//
// With an executor that starts its containers in a namespace it is given
// (containerd), the namespace is created and plumbed first and the task
// starts in it, as a cold job's does.
//
// Pooled sandboxes carry the runner's labels and owner like jobs (their
// id is "pool-<hex>"), so recovery after a crash removes them as it removes
// a crashed job's container, network, namespace and runtime directory.
type Pool struct {
	r   *Runner
	log hclog.Logger

	// listed are the images an admin listed; recent images are added to
	// want while they are among the most used (note).
	listed             map[string]int
	recent, recentSize int

	mu           sync.Mutex
	want         map[string]int // image -> sandboxes kept ready
	history      []string       // the last recentWindow eligible jobs' images, oldest first
	historyFile  string
	historyDirty bool // history changed since it was last saved
	ready        map[string][]*warmSandbox
	building     map[string]int
	inBuild      int // builds past waitRoom, counted against concurrent
	closed       bool
	kick         chan struct{}
	stop         context.CancelFunc
	done         chan struct{}
	bg           sync.WaitGroup // retired sandboxes being removed

	concurrent   int
	minAvailable int64
	// held is why refills wait now (nil when they do not), for Stats.
	held atomic.Pointer[string]

	hits, misses, retired atomic.Int64
	dead                  atomic.Int64 // ready sandboxes found dead
	netHits, netMisses    atomic.Int64 // claims of network-only sandboxes
	lastClaim             atomic.Int64 // unix ns of the last claim, hit or miss
	// checkEvery is how often ready sandboxes are checked against their
	// image's name (an update retires them before a job finds them).
	checkEvery time.Duration
}

// warmSandbox is one pooled sandbox.
type warmSandbox struct {
	id     string
	image  string
	dir    string // runtime directory (mounted at /run/airlock)
	resolv string // its resolv.conf (mounted at /etc/resolv.conf)
	ctr    executors.Container
	sb     *sandbox.Network // nil when the runner gives jobs no network
	netns  string           // the named namespace made for it ("" when the executor made one)
	// holder keeps a network-only sandbox's namespace with an executor
	// that makes namespaces itself (executors.NetworkHolder).
	holder executors.Holder
	// imageID is the image it was made from ("" when the executor cannot
	// tell): when the name names another image, it is retired.
	imageID string
}

// PoolStats are the pool's counters.
type PoolStats struct {
	Hits, Misses int64
	// Retired counts ready sandboxes removed because their image's name
	// came to name another image (or none).
	Retired int64
	// Dead counts ready sandboxes found dead (their container or holder
	// had stopped) and removed unclaimed.
	Dead int64
	// NetHits and NetMisses count jobs that found a network-only sandbox
	// (PoolConfig.Networks) ready or none; Ready["(network)"] is how many
	// are ready.
	NetHits, NetMisses int64
	// Held says why refills wait ("" when they do not): the jobs running
	// and builds in progress are at Concurrent, or the host's available
	// memory is below MinAvailable.
	Held  string
	Ready map[string]int
}

// PoolConfig says which warm sandboxes to keep.
type PoolConfig struct {
	// Sizes maps each image an admin listed to its number of sandboxes.
	Sizes map[string]int
	// Recent also keeps RecentSize sandboxes (default 1) of each of the
	// Recent images most used by the last recentWindow jobs (0: none).
	Recent, RecentSize int
	// Networks keeps this many network namespaces plumbed and firewalled
	// (no container of a job) for jobs of any image that claim no warm
	// sandbox: made by Airlock with an executor that joins a namespace it
	// is given (containerd), or held by a holder the job's container
	// joins (Docker, executors.NetworkHolder). Their network is then off
	// their path too.
	Networks int
	// Concurrent bounds the work of jobs and refills together: a sandbox
	// is built only while the jobs running plus the sandboxes being built
	// are no more than it (the agent's concurrent; 0: no bound).
	Concurrent int
	// HistoryFile keeps the images the last jobs used (Recent's count)
	// across restarts: read at the start, written every check and at
	// Close ("" : counts start empty).
	HistoryFile string
	// MinAvailable is the memory the host must have available
	// (MemAvailable) for a sandbox to be built, since a claimed sandbox
	// becomes a job that may use its memory limit (0: no bound).
	MinAvailable int64
}

// poolNetworks is the pool's key for its network-only sandboxes; no
// image reference has parentheses.
const poolNetworks = "(network)"

// recentWindow is how many of the last jobs' images Recent counts.
const recentWindow = 100

// StartPool starts keeping the warm sandboxes cfg names until ClosePool
// (or Close). Jobs claim them from then on. With pull policy "always", a
// job that would claim one pulls its image first, as its Create would, and
// claims it only if it was made from the image pulled.
func (r *Runner) StartPool(ctx context.Context, cfg PoolConfig) (*Pool, error) {
	if _, ok := r.exec.(executors.ImagePuller); r.cfg.Pull == executors.PullAlways && !ok {
		return nil, errors.New("pool: not used with pull_policy \"always\" with an executor that cannot pull for a job: a pooled container would keep the image it was made from")
	}
	listed := map[string]int{}
	for img, n := range cfg.Sizes {
		if n < 0 {
			return nil, fmt.Errorf("pool: size of %s is negative", img)
		}
		if n > 0 {
			listed[img] = n
		}
	}
	if cfg.Recent < 0 || cfg.RecentSize < 0 || cfg.Networks < 0 {
		return nil, fmt.Errorf("pool: recent %d, recent size %d, networks %d: must not be negative", cfg.Recent, cfg.RecentSize, cfg.Networks)
	}
	if cfg.Networks > 0 {
		if r.Network == nil {
			return nil, errors.New("pool: networks are kept only with the network sandbox on")
		}
		if !r.joinsNetNS() {
			if _, err := r.holdsNetworks(); err != nil {
				return nil, fmt.Errorf("pool: networks cannot be kept: %w", err)
			}
		}
		listed[poolNetworks] = cfg.Networks
	}
	if cfg.RecentSize == 0 {
		cfg.RecentSize = 1
	}
	if cfg.Concurrent < 0 || cfg.MinAvailable < 0 {
		return nil, fmt.Errorf("pool: concurrent %d, minimum available memory %d: must not be negative", cfg.Concurrent, cfg.MinAvailable)
	}
	want := maps.Clone(listed)
	pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	p := &Pool{r: r, want: want, listed: listed, recent: cfg.Recent, recentSize: cfg.RecentSize,
		log: r.log.Named("pool"), ready: map[string][]*warmSandbox{},
		building: map[string]int{}, kick: make(chan struct{}, 1), stop: stop, done: make(chan struct{}),
		checkEvery: poolCheckEvery, concurrent: cfg.Concurrent, minAvailable: cfg.MinAvailable}
	if cfg.Recent > 0 && cfg.HistoryFile != "" {
		p.historyFile = cfg.HistoryFile
		h, err := loadHistory(cfg.HistoryFile)
		if err != nil {
			// Counts are a hint: start empty, keep the file for a look.
			aside := cfg.HistoryFile + ".corrupt"
			p.log.Warn("the recent images file is unreadable; counting from none, the file is kept aside", "file", cfg.HistoryFile, "kept", aside, "error", err)
			if rerr := os.Rename(cfg.HistoryFile, aside); rerr != nil {
				p.log.Warn("keeping the recent images file aside", "error", rerr)
			}
		}
		p.history = h
		p.rewantLocked()
	}
	if !r.pool.CompareAndSwap(nil, p) {
		stop()
		return nil, errors.New("pool: already started")
	}
	total := cfg.Recent * cfg.RecentSize
	for _, n := range want {
		total += n
	}
	workers := min(max(total, 1), maxRefillers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { p.refill(pctx) })
	}
	wg.Go(func() { p.watch(pctx) })
	go func() { wg.Wait(); close(p.done) }()
	p.nudge()
	return p, nil
}

// Stats returns the pool's counters and ready sandboxes by image.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := PoolStats{Hits: p.hits.Load(), Misses: p.misses.Load(), Retired: p.retired.Load(), Dead: p.dead.Load(),
		NetHits: p.netHits.Load(), NetMisses: p.netMisses.Load(), Ready: map[string]int{}}
	if h := p.held.Load(); h != nil {
		st.Held = *h
	}
	for img, ws := range p.ready {
		st.Ready[img] = len(ws)
	}
	return st
}

// WaitReady waits until every image has its sandboxes ready, or ctx ends.
func (p *Pool) WaitReady(ctx context.Context) error {
	for {
		full := true
		p.mu.Lock()
		for img, n := range p.want {
			if len(p.ready[img]) < n {
				full = false
			}
		}
		p.mu.Unlock()
		if full {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for warm sandboxes: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *Pool) nudge() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// claim takes a ready sandbox for j's image, or returns nil (the job runs
// cold). A sandbox made from another image than the one the name names
// now (updated by a pull or a tag, or removed) is retired, never claimed.
func (p *Pool) claim(ctx context.Context, j *job.Job) *warmSandbox {
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
		cur, known, err := p.imageNow(ctx, j)
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
// policy "always", or when j has credentials for its image's registry,
// the one pulled for it now with them (a failed pull is an error: the job
// runs cold and its Create reports it); else the one its name names here
// (imageHere).
func (p *Pool) imageNow(ctx context.Context, j *job.Job) (id string, known bool, err error) {
	auths := registryAuth(j)
	// A job with credentials for its image's registry pulls it with them,
	// as its Create would (the registry decides whether it may have it):
	// a sandbox made without them is no way around that.
	own := executors.AuthFor(executors.RegistryHost(j.Image), auths) != nil
	if p.r.cfg.Pull != executors.PullAlways && !own {
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

// note counts j's image among the recent ones, when the pool keeps the
// most used, and updates which images are kept. Only an image that can be
// kept without the job is counted: not one of a job with services (those
// never claim), with registry credentials for it, or whose name holds a value of
// its private variables (names end up in logs and metric labels).
func (p *Pool) note(j *job.Job) {
	// Credentials for another registry do not count: GitLab gives every
	// job its own registry's.
	if p == nil || p.recent == 0 || j.Image == "" || len(j.Services) > 0 ||
		executors.AuthFor(executors.RegistryHost(j.Image), registryAuth(j)) != nil ||
		slices.ContainsFunc(privateValues(j), func(v string) bool { return strings.Contains(j.Image, v) }) {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if len(p.history) == recentWindow {
		copy(p.history, p.history[1:])
		p.history = p.history[:recentWindow-1]
	}
	p.history = append(p.history, j.Image)
	p.historyDirty = true
	dropped := p.rewantLocked()
	m := p.r.metrics.Load()
	var gone []*warmSandbox
	for img, ws := range dropped {
		m.PoolReady(img, 0)
		gone = append(gone, ws...)
	}
	p.mu.Unlock()
	if len(dropped) > 0 {
		p.log.Debug("images no longer among the most used", "images", slices.Sorted(maps.Keys(dropped)))
	}
	p.discard(gone)
	p.nudge()
}

// rewantLocked sets want to the listed images and the recent most used
// ones (used by two jobs at least; ties go to the one used last), and
// returns the ready sandboxes of the images no longer kept, taken out.
func (p *Pool) rewantLocked() map[string][]*warmSandbox {
	count, last := map[string]int{}, map[string]int{}
	for i, img := range p.history {
		count[img]++
		last[img] = i
	}
	var imgs []string
	for img, n := range count {
		if _, ok := p.listed[img]; !ok && n >= 2 {
			imgs = append(imgs, img)
		}
	}
	sort.Slice(imgs, func(a, b int) bool {
		if count[imgs[a]] != count[imgs[b]] {
			return count[imgs[a]] > count[imgs[b]]
		}
		return last[imgs[a]] > last[imgs[b]]
	})
	want := maps.Clone(p.listed)
	for _, img := range imgs[:min(len(imgs), p.recent)] {
		want[img] = p.recentSize
	}
	dropped := map[string][]*warmSandbox{}
	for img := range p.want {
		if _, ok := want[img]; !ok {
			dropped[img] = p.ready[img]
			delete(p.ready, img)
		}
	}
	p.want = want
	return dropped
}

// historyFormat is the recent images file's format: the images of the
// last jobs, oldest first.
type historyFormat struct {
	Version int      `json:"version"`
	Images  []string `json:"images"`
}

// loadHistory reads a recent images file (none: empty). Only the last
// recentWindow entries are kept; an entry that cannot be an image name
// makes the file unreadable.
func loadHistory(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h historyFormat
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if h.Version != 1 {
		return nil, fmt.Errorf("%s: version %d, want 1", path, h.Version)
	}
	for i, img := range h.Images {
		if img == "" || len(img) > 512 || strings.ContainsFunc(img, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return nil, fmt.Errorf("%s: images[%d] %q is not an image name", path, i, img)
		}
	}
	return h.Images[max(0, len(h.Images)-recentWindow):], nil
}

// saveHistory writes the recent images file if the history changed.
func (p *Pool) saveHistory() {
	p.mu.Lock()
	if p.historyFile == "" || !p.historyDirty {
		p.mu.Unlock()
		return
	}
	b, err := json.Marshal(historyFormat{Version: 1, Images: p.history})
	p.historyDirty = false
	p.mu.Unlock()
	if err == nil {
		err = atomicfile.WriteFile(p.historyFile, b, 0o600)
	}
	if err != nil {
		p.log.Warn("saving the recent images", "file", p.historyFile, "error", err)
	}
}

// poolCheckEvery is how often the pool checks its ready sandboxes against
// their image's name, and that they are alive.
var poolCheckEvery = 15 * time.Second

// watch checks, every checkEvery, that the ready sandboxes are alive and
// that each image's were made from the image its name names now, and
// retires the others, so that the pool refills before a job asks.
func (p *Pool) watch(ctx context.Context) {
	t := time.NewTicker(p.checkEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.saveHistory()
		p.sweepDead()
		p.mu.Lock()
		var imgs []string
		for img, ws := range p.ready {
			if len(ws) > 0 && img != poolNetworks {
				imgs = append(imgs, img)
			}
		}
		p.mu.Unlock()
		for _, img := range imgs {
			cur, known, err := p.imageHere(ctx, img)
			if err != nil {
				if ctx.Err() == nil {
					p.log.Warn("checking the image of warm sandboxes", "image", img, "error", err)
				}
				continue
			}
			if known {
				p.retire(img, cur)
			}
		}
	}
}

// maxRefillers bounds the sandboxes built at once.
const maxRefillers = 4

// A refill waits until no job has claimed (or missed) a sandbox for
// refillQuiet, and at most refillMaxDefer: a build — a container created
// and started, a network set up — competes for the CPUs and the kernel's
// locks with the jobs that just started, and those jobs are what the pool
// is for. Measured with 16 jobs claiming at once on 2 cores: the network
// work left on a claimed job's path (its gateway registration) took a
// median 35–67 ms while refills ran beside it, 2.3 ms when they waited.
const (
	refillQuiet    = 250 * time.Millisecond
	refillMaxDefer = time.Second
)

// waitQuiet waits until refillQuiet has passed since the last claim, or
// refillMaxDefer since it was called, or ctx ends.
func (p *Pool) waitQuiet(ctx context.Context) error {
	deadline := time.Now().Add(refillMaxDefer)
	for {
		wake := time.Unix(0, p.lastClaim.Load()).Add(refillQuiet)
		if wake.After(deadline) {
			wake = deadline
		}
		d := time.Until(wake)
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// roomEvery is how often a refill held back by waitRoom looks again.
const roomEvery = 100 * time.Millisecond

// waitRoom waits until a build fits (reserve) and reserves it: the
// caller calls p.built() when it is done. Stats.Held says why it waits.
func (p *Pool) waitRoom(ctx context.Context) error {
	defer p.held.Store(nil)
	logged := ""
	for {
		why := p.reserve()
		if why == "" {
			return nil
		}
		p.held.Store(&why)
		if kind, _, _ := strings.Cut(why, ":"); kind != logged {
			// Waiting for memory is worth an admin's look; for jobs to
			// end, only while debugging.
			if kind == "memory" {
				p.log.Warn("refills wait", "reason", why)
			} else {
				p.log.Debug("refills wait", "reason", why)
			}
			logged = kind
		}
		t := time.NewTimer(roomEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// reserve reserves a build and returns "", or says why a build does not
// fit now: with it, the jobs running plus the builds in progress would be
// more than Concurrent, or the host has less than MinAvailable memory.
func (p *Pool) reserve() string {
	if p.minAvailable > 0 {
		avail, err := memAvailable()
		if err != nil {
			return "" // a host that cannot say is not held back
		}
		if avail < p.minAvailable {
			return fmt.Sprintf("memory: %d MiB available, a job may use %d MiB", avail>>20, p.minAvailable>>20)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if running := int(p.r.running.Load()); p.concurrent > 0 && running+p.inBuild+1 > p.concurrent {
		return fmt.Sprintf("concurrent: %d jobs running and %d sandboxes being built, concurrent = %d", running, p.inBuild, p.concurrent)
	}
	p.inBuild++
	return ""
}

// memInfo is where the host's memory is read (tests point it elsewhere).
var memInfo = "/proc/meminfo"

// memAvailable is the host's MemAvailable, in bytes.
func memAvailable() (int64, error) {
	b, err := os.ReadFile(memInfo)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			v := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB"))
			kb, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemAvailable %q: %w", memInfo, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("%s: no MemAvailable", memInfo)
}

// refill builds sandboxes until each image has its count, with a back-off
// after failures; several refillers run at once (maxRefillers).
func (p *Pool) refill(ctx context.Context) {
	fails := 0
	for {
		img := p.missing()
		if img == "" {
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
				continue
			}
		}
		p.nudge() // wake another refiller: more may be missing
		if p.waitQuiet(ctx) != nil || p.waitRoom(ctx) != nil {
			p.mu.Lock()
			p.building[img]--
			p.mu.Unlock()
			return
		}
		w, err := p.build(ctx, img)
		p.mu.Lock()
		p.building[img]--
		p.inBuild--
		// Closed meanwhile, or no longer among the images kept.
		unwanted := p.closed || p.want[img] == 0
		if err == nil && !unwanted {
			p.ready[img] = append(p.ready[img], w)
			p.r.metrics.Load().PoolReady(img, len(p.ready[img]))
		}
		p.mu.Unlock()
		if err == nil && unwanted {
			p.destroy(context.Background(), w)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fails++
			wait := min(time.Duration(fails)*time.Second, time.Minute)
			p.log.Error("making a warm sandbox failed", "image", img, "error", err, "retry_in", wait)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		fails = 0
	}
}

// missing returns an image short of sandboxes (counting those being
// built), marking one as being built; "" when none is.
func (p *Pool) missing() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ""
	}
	imgs := make([]string, 0, len(p.want))
	for img := range p.want {
		imgs = append(imgs, img)
	}
	sort.Strings(imgs)
	for _, img := range imgs {
		if len(p.ready[img])+p.building[img] < p.want[img] {
			p.building[img]++
			return img
		}
	}
	return ""
}

// build makes one warm sandbox of image. On error nothing of it is left.
func (p *Pool) build(ctx context.Context, image string) (w *warmSandbox, err error) {
	r := p.r
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	w = &warmSandbox{id: "pool-" + hex.EncodeToString(b), image: image}
	defer func() {
		if err != nil {
			p.destroy(context.WithoutCancel(ctx), w)
			w = nil
		}
	}()
	if image == poolNetworks {
		// A namespace for a cold job: plumbed and firewalled, no container
		// of the job. An executor that makes namespaces itself makes it in
		// a holder, which the job's container joins.
		if r.joinsNetNS() {
			return w, p.setupNet(ctx, w, "")
		}
		nh, err := r.holdsNetworks()
		if err != nil {
			return w, err
		}
		if w.holder, err = nh.HoldNetwork(ctx, r.cfg.RunnerID, w.id, map[string]string{labelOwner: r.owner.String()}); err != nil {
			return w, err
		}
		return w, p.setupNet(ctx, w, w.holder.NetNS())
	}
	if w.dir, err = r.makeRuntimeDir(w.id); err != nil {
		return w, err
	}
	mounts, err := r.runtimeMounts(w.dir)
	if err != nil {
		return w, err
	}
	w.resolv = filepath.Join(w.dir, "resolv.conf")
	start := time.Now()
	spec := executors.Spec{
		RunnerID: r.cfg.RunnerID, JobID: w.id, Image: image, Pull: r.cfg.Pull,
		Limits: r.cfg.Limits, WorkDir: r.cfg.WorkDir, User: r.cfg.User, Mounts: mounts,
		Labels: map[string]string{labelOwner: r.owner.String()},
	}
	// An executor that joins a namespace gets one plumbed and firewalled
	// before its task exists, as a cold job's; the others' containers
	// come first and their namespace is plumbed after.
	joins := r.Network != nil && r.joinsNetNS()
	if joins {
		if err := p.plumb(ctx, w, ""); err != nil {
			return w, err
		}
		spec.NetNS = w.netns
	}
	if w.ctr, err = r.exec.Create(ctx, spec); err != nil {
		return w, fmt.Errorf("creating a warm container of %s: %w", image, err)
	}
	if ir, ok := w.ctr.(executors.ImageReporter); ok {
		w.imageID = ir.ImageID()
	}
	if r.Network != nil && !joins {
		if err := p.plumb(ctx, w, w.ctr.NetNS()); err != nil {
			return w, err
		}
	}
	p.log.Debug("warm sandbox ready", "image", image, "sandbox", w.id, "took", time.Since(start))
	return w, nil
}

// plumb sets up the warm sandbox's network (setupNet) and points its
// resolv.conf at its gateway.
func (p *Pool) plumb(ctx context.Context, w *warmSandbox, netns string) error {
	if err := p.setupNet(ctx, w, netns); err != nil {
		return err
	}
	if err := rewriteInPlace(w.resolv, resolvConf(w.sb.GatewayIP)); err != nil {
		return fmt.Errorf("writing resolv.conf: %w", err)
	}
	return nil
}

// setupNet sets up the sandbox's network in the namespace netns, or ("")
// in a named namespace made for it first.
func (p *Pool) setupNet(ctx context.Context, w *warmSandbox, netns string) (err error) {
	if netns == "" {
		if w.netns, err = p.r.Network.Sandbox.CreateNetNS(w.id); err != nil {
			return fmt.Errorf("a warm sandbox of %s: %w", w.image, err)
		}
		netns = w.netns
	}
	if w.sb, err = p.r.Network.Sandbox.Setup(ctx, w.id, netns); err != nil {
		return fmt.Errorf("plumbing a warm sandbox of %s: %w", w.image, err)
	}
	return nil
}

// destroy removes a sandbox no job claimed.
func (p *Pool) destroy(ctx context.Context, w *warmSandbox) error {
	var errs []error
	if w.ctr != nil {
		errs = append(errs, w.ctr.Destroy(ctx))
	}
	if w.holder != nil {
		errs = append(errs, w.holder.Destroy(ctx))
	}
	errs = append(errs, w.closeNet(ctx, p.r.Network))
	if w.dir != "" {
		errs = append(errs, removeRuntimeDir(w.dir))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing warm sandbox %s: %w", w.id, err)
	}
	return nil
}

// closeNet tears down the sandbox's network and deletes the namespace made
// for it, if any: for a sandbox no job registered a policy on.
func (w *warmSandbox) closeNet(ctx context.Context, n *Network) error {
	var errs []error
	if w.sb != nil {
		errs = append(errs, w.sb.Teardown(ctx))
		w.sb = nil
	}
	if w.netns != "" {
		errs = append(errs, n.Sandbox.DeleteNetNS(w.id))
		w.netns = ""
	}
	return errors.Join(errs...)
}

// Close stops refilling and removes every sandbox no job claimed.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var all []*warmSandbox
	for _, ws := range p.ready {
		all = append(all, ws...)
	}
	p.ready = map[string][]*warmSandbox{}
	m := p.r.metrics.Load()
	for img := range p.want {
		m.PoolReady(img, 0)
	}
	p.mu.Unlock()
	p.stop()
	<-p.done
	p.bg.Wait()
	p.saveHistory()
	var errs []error
	for _, w := range all {
		errs = append(errs, p.destroy(ctx, w))
	}
	p.r.pool.CompareAndSwap(p, nil)
	return errors.Join(errs...)
}

// ClosePool closes the pool StartPool started, if any.
func (r *Runner) ClosePool(ctx context.Context) error {
	if p := r.pool.Load(); p != nil {
		return p.Close(ctx)
	}
	return nil
}
