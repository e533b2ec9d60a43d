package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/internal/atomicfile"
	"github.com/airlock-ci/airlock/internal/procs"
)

// allocation is one /30 handed out to a job, as persisted in the pool file.
type allocation struct {
	Prefix   netip.Prefix `json:"prefix"`
	RunnerID string       `json:"runner"`
	JobID    string       `json:"job"`
	PID      int          `json:"pid"`
	PIDStart uint64       `json:"pid_start"` // /proc/PID/stat starttime, rules out PID reuse
	HostIf   string       `json:"host_if"`
	Time     time.Time    `json:"time"`
}

type poolState struct {
	Allocations []allocation `json:"allocations"`
}

// pool hands out /30 subnets of a prefix. Allocations are persisted in a
// JSON file guarded by flock on a sibling lock file, so that several
// processes on the host never hand out the same /30. An allocation is only
// freed by release (its owner tearing down) or by a sweep after its owner
// died: a dead owner's /30 may still be configured on a leftover veth.
type pool struct {
	prefix netip.Prefix
	path   string

	// Group commit: concurrent updates of this process share one locked
	// read-modify-write of the file (see update).
	mu      sync.Mutex
	queue   []*poolUpdate
	leading bool
}

type poolUpdate struct {
	fn   func(st *poolState) (bool, error)
	err  error
	done chan struct{} // committed (err is set)
	lead chan struct{} // this update leads the next batch
}

func newPool(prefix netip.Prefix, path string) (*pool, error) {
	prefix = prefix.Masked()
	if !prefix.Addr().Is4() || prefix.Bits() > 30 {
		return nil, fmt.Errorf("address pool %s must be an IPv4 prefix of /30 or larger", prefix)
	}
	if path == "" {
		return nil, errors.New("address pool file path is empty")
	}
	return &pool{prefix: prefix, path: path}, nil
}

func (p *pool) size() int { return 1 << (30 - p.prefix.Bits()) }

// slot returns the i-th /30 of the pool.
func (p *pool) slot(i int) netip.Prefix {
	b := p.prefix.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i) * 4
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 30)
}

// update runs fn on the pool state under an exclusive lock and, when fn
// returns true, persists the new state atomically (temp file, fsync, rename).
//
// Updates that arrive while another is being committed are committed
// together: the caller that finds no commit under way leads, running every
// queued fn on one read of the file and persisting once; when it is done
// the first update queued meanwhile leads the next batch (so no caller
// waits for more than the batch before its own). A fn that fails leaves
// the state as it found it (its changes are rolled back) and fails alone;
// a failure to read or write the file fails the whole batch.
func (p *pool) update(fn func(st *poolState) (bool, error)) error {
	u := &poolUpdate{fn: fn, done: make(chan struct{}), lead: make(chan struct{})}
	p.mu.Lock()
	p.queue = append(p.queue, u)
	lead := !p.leading
	p.leading = true
	p.mu.Unlock()
	if !lead {
		select {
		case <-u.done:
			return u.err
		case <-u.lead:
		}
	}
	p.mu.Lock()
	batch := p.queue
	p.queue = nil
	p.mu.Unlock()
	p.commit(batch)
	p.mu.Lock()
	if len(p.queue) > 0 {
		close(p.queue[0].lead)
	} else {
		p.leading = false
	}
	p.mu.Unlock()
	return u.err
}

// commit runs a batch of updates in one locked read-modify-write.
func (p *pool) commit(batch []*poolUpdate) {
	err := p.updateFile(func(st *poolState) (bool, error) {
		changed := false
		for _, u := range batch {
			saved := slices.Clone(st.Allocations)
			c, err := u.fn(st)
			if err != nil {
				st.Allocations, u.err = saved, err
				continue
			}
			changed = changed || c
		}
		return changed, nil
	})
	for _, u := range batch {
		if err != nil && u.err == nil {
			u.err = err
		}
		close(u.done)
	}
}

// updateFile is update for one fn, without batching.
func (p *pool) updateFile(fn func(st *poolState) (bool, error)) error {
	if err := os.MkdirAll(filepath.Dir(p.path), 0o755); err != nil {
		return fmt.Errorf("creating pool directory: %w", err)
	}
	lock, err := os.OpenFile(p.path+".lock", os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("opening pool lock: %w", err)
	}
	defer lock.Close()
	for {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("locking pool: %w", err)
	}
	// Closing lock (deferred above) releases the flock.

	var st poolState
	data, err := os.ReadFile(p.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading pool %s: %w", p.path, err)
	case len(data) > 0:
		if err := json.Unmarshal(data, &st); err != nil {
			return fmt.Errorf("parsing pool %s: %w", p.path, err)
		}
	}
	changed, err := fn(&st)
	if err != nil || !changed {
		return err
	}
	return writeFileSync(p.path, &st)
}

func writeFileSync(path string, st *poolState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding pool: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing pool: %w", err)
	}
	return nil
}

// removeTemps removes the temporary files of pool writes that a crash
// interrupted: atomicfile's, and "<pool>.tmp*" of older versions. Call it
// under the pool's lock.
func (p *pool) removeTemps() error {
	tmps, err := atomicfile.Temps(p.path)
	if err != nil {
		return err
	}
	legacy, _ := filepath.Glob(p.path + ".tmp*")
	var errs []error
	for _, f := range append(tmps, legacy...) {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing leftover %s: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

// allocate reserves the lowest free /30 for a job owned by this process,
// passing over those in taken (addresses the host already has: another
// runner's pool file, a VPN). It fails when an allocation with the same
// host interface exists.
func (p *pool) allocate(a allocation, taken map[netip.Prefix]bool) (netip.Prefix, error) {
	var got netip.Prefix
	err := p.update(func(st *poolState) (bool, error) {
		used := make(map[netip.Prefix]bool, len(st.Allocations))
		for _, e := range st.Allocations {
			if e.HostIf == a.HostIf {
				state := "live"
				if !processAlive(e.PID, e.PIDStart) {
					state = "dead (run a sweep)"
				}
				return false, fmt.Errorf("interface %s is already allocated to job %s of runner %s, owner pid %d %s", a.HostIf, e.JobID, e.RunnerID, e.PID, state)
			}
			used[e.Prefix] = true
		}
		for i := range p.size() {
			if s := p.slot(i); !used[s] && !taken[s] {
				got = s
				a.Prefix = s
				st.Allocations = append(st.Allocations, a)
				return true, nil
			}
		}
		others := 0
		for s := range taken {
			if !used[s] {
				others++
			}
		}
		if others > 0 {
			return false, fmt.Errorf("address pool %s is exhausted (%d allocations, %d more /30s hold addresses of the host's interfaces)", p.prefix, len(st.Allocations), others)
		}
		return false, fmt.Errorf("address pool %s is exhausted (%d allocations)", p.prefix, len(st.Allocations))
	})
	return got, err
}

// hostTaken returns the pool's /30s that hold an address of one of the
// host's interfaces. The pool file only knows the runners that share it:
// a second runner with a pool file of its own, or a VPN, may use the same
// addresses, and a job given one of them would share a route with
// another network — its packets going to the other's veth.
func (p *pool) hostTaken() (map[netip.Prefix]bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing the host's addresses: %w", err)
	}
	var taken map[netip.Prefix]bool
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || !p.prefix.Contains(ip) {
			continue
		}
		if taken == nil {
			taken = map[netip.Prefix]bool{}
		}
		taken[netip.PrefixFrom(ip, 30).Masked()] = true
	}
	return taken, nil
}

// release frees the allocation of prefix held by hostIf. Releasing twice is
// not an error.
func (p *pool) release(prefix netip.Prefix, hostIf string) error {
	return p.update(func(st *poolState) (bool, error) {
		n := len(st.Allocations)
		st.Allocations = deleteWhere(st.Allocations, func(e allocation) bool { return e.Prefix == prefix && e.HostIf == hostIf })
		return len(st.Allocations) != n, nil
	})
}

func deleteWhere(s []allocation, del func(allocation) bool) []allocation {
	out := s[:0]
	for _, e := range s {
		if !del(e) {
			out = append(out, e)
		}
	}
	return out
}

// snapshot returns the current allocations.
func (p *pool) snapshot() ([]allocation, error) {
	var out []allocation
	err := p.update(func(st *poolState) (bool, error) {
		out = append(out, st.Allocations...)
		return false, nil
	})
	return out, err
}

// processAlive reports whether process pid exists and started at start.
func processAlive(pid int, start uint64) bool { return procs.Owner{PID: pid, Start: start}.Alive() }
