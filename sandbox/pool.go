package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

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
func (p *pool) update(fn func(st *poolState) (bool, error)) error {
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
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing pool: %w", err)
	}
	_, werr := tmp.Write(append(data, '\n'))
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing pool: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing pool: %w", err)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("syncing pool directory: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("syncing pool directory: %w", err)
	}
	return nil
}

// allocate reserves the lowest free /30 for a job owned by this process.
// It fails when an allocation with the same host interface exists.
func (p *pool) allocate(a allocation) (netip.Prefix, error) {
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
			if s := p.slot(i); !used[s] {
				got = s
				a.Prefix = s
				st.Allocations = append(st.Allocations, a)
				return true, nil
			}
		}
		return false, fmt.Errorf("address pool %s is exhausted (%d allocations)", p.prefix, len(st.Allocations))
	})
	return got, err
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
