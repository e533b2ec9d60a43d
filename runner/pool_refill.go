package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/executors"
)

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
// refillQuiet, and at most refillMaxDefer, unless the jobs leave the host
// a core to spare (cpuLook): a build — a container created and started, a
// network set up — competes for the CPUs and the kernel's locks with the
// jobs that just started, and those jobs are what the pool is for.
// Measured with 16 jobs claiming at once on 2 cores: the network work left
// on a claimed job's path (its gateway registration) took a median
// 35–67 ms while refills ran beside it, 2.3 ms when they waited.
const (
	refillQuiet    = 250 * time.Millisecond
	refillMaxDefer = time.Second
)

// waitQuiet waits until refillQuiet has passed since the last claim, or
// refillMaxDefer since it was called, or the CPUs had a core to spare over
// a look of roomEvery since it was called, or ctx ends.
func (p *Pool) waitQuiet(ctx context.Context) error {
	deadline := time.Now().Add(refillMaxDefer)
	look := newCPULook()
	for {
		wake := time.Unix(0, p.lastClaim.Load()).Add(refillQuiet)
		if wake.After(deadline) {
			wake = deadline
		}
		d := time.Until(wake)
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(min(d, roomEvery))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if look.spare() {
			return nil
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
	look := newCPULook()
	spare := false // not known before a look
	for {
		why := p.reserve(spare)
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
		spare = look.spare()
	}
}

// reserve reserves a build and returns "", or says why a build does not
// fit now: the host has less than MinAvailable memory; or the builds in
// progress would be more than Concurrent; or the jobs running plus the
// builds would be, and the CPUs have no core to spare (spare: a look
// found one idle). A pool never builds more at once than the runner may
// start jobs; beside running jobs only with what they leave idle.
func (p *Pool) reserve(spare bool) string {
	if p.minAvailable > 0 {
		// A host that cannot say (err) is not held back.
		if avail, err := memAvailable(); err == nil && avail < p.minAvailable {
			return fmt.Sprintf("memory: %d MiB available, a job may use %d MiB", avail>>20, p.minAvailable>>20)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.concurrent > 0 {
		running := int(p.r.running.Load())
		if p.inBuild+1 > p.concurrent {
			return fmt.Sprintf("concurrent: %d sandboxes being built, concurrent = %d", p.inBuild, p.concurrent)
		}
		if running+p.inBuild+1 > p.concurrent && !spare {
			return fmt.Sprintf("concurrent: %d jobs running and %d sandboxes being built, concurrent = %d, no CPU core to spare", running, p.inBuild, p.concurrent)
		}
	}
	p.inBuild++
	return ""
}

// spareCores is how much of the host's CPUs a look must find idle for a
// build to run beside jobs that fill concurrent.
const spareCores = 0.5

// cpuStat is where the host's CPU times are read (tests point it elsewhere).
var cpuStat = "/proc/stat"

// cpuTimes are the host's CPU times, in ticks: idle (with iowait) and all,
// and the number of cores.
type cpuTimes struct {
	idle, all int64
	cores     int
}

func readCPU() (cpuTimes, error) {
	b, err := os.ReadFile(cpuStat)
	if err != nil {
		return cpuTimes{}, err
	}
	var t cpuTimes
	found := false
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			t.cores++
			continue
		}
		if len(f) < 6 {
			return cpuTimes{}, fmt.Errorf("%s: %d fields on the cpu line", cpuStat, len(f))
		}
		for i, v := range f[1:min(len(f), 9)] { // user nice system idle iowait irq softirq steal
			x, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return cpuTimes{}, fmt.Errorf("%s: cpu field %d %q: %w", cpuStat, i+1, v, err)
			}
			t.all += x
			if i == 3 || i == 4 {
				t.idle += x
			}
		}
		found = true
	}
	if !found || t.cores == 0 {
		return cpuTimes{}, fmt.Errorf("%s: no cpu lines", cpuStat)
	}
	return t, nil
}

// cpuLook measures the CPUs left idle between one look and the next.
type cpuLook struct {
	prev cpuTimes
	ok   bool
}

func newCPULook() *cpuLook {
	t, err := readCPU()
	return &cpuLook{prev: t, ok: err == nil}
}

// spare reports whether at least spareCores of the host's cores were idle
// since the last look; false when the host cannot say.
func (l *cpuLook) spare() bool {
	t, err := readCPU()
	prev, ok := l.prev, l.ok
	l.prev, l.ok = t, err == nil
	if err != nil || !ok || t.all <= prev.all || t.idle < prev.idle {
		return false
	}
	idle := float64(t.cores) * float64(t.idle-prev.idle) / float64(t.all-prev.all)
	return idle >= spareCores
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
