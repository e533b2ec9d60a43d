package runner

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/airlock-ci/airlock/executors"
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
	// Held says why refills wait ("" when they do not): the builds in
	// progress are at Concurrent, or with the jobs running they are and
	// the CPUs have no core to spare, or the host's available memory is
	// below MinAvailable.
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
	// Concurrent bounds refills (the agent's concurrent; 0: no bound):
	// never more sandboxes built at once than it, and a sandbox is built
	// only while the jobs running plus the sandboxes being built are no
	// more than it, or while the CPUs have spareCores idle.
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
