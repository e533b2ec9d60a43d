package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/airlock-ci/airlock/netpolicy"
)

// Sweep removes what this runner's dead processes left behind: host veths
// named with this runner's tag, their firewall rules and chains, their
// pool allocations, and the named network namespaces they created
// (CreateNetNS). An allocation is dead when its owner process (pid and
// start time) is gone. Resources held by a live allocation - of any runner,
// including this process's own jobs - and resources of other runners are
// never touched. Sweep holds the pool lock throughout, so a Setup running
// concurrently (whose allocation precedes its veth) is never swept. It
// returns the errors.Join of every failure.
func (m *Manager) Sweep(ctx context.Context) error {
	var errs []error
	err := m.pool.update(func(st *poolState) (bool, error) {
		rtag := netpolicy.RunnerTag(m.cfg.RunnerID)
		live := map[string]bool{} // host interfaces held by live owners
		var dead []allocation
		for _, a := range st.Allocations {
			switch {
			case processAlive(a.PID, a.PIDStart):
				live[a.HostIf] = true
			case a.RunnerID == m.cfg.RunnerID:
				dead = append(dead, a)
			}
		}
		keep := func(jobTag string) bool { return live[netpolicy.HostIfPrefix+rtag+jobTag] }

		links, err := linkList()
		if err != nil {
			errs = append(errs, fmt.Errorf("listing links: %w", err))
		}
		for _, l := range links {
			name := l.Attrs().Name
			jt, ok := netpolicy.JobTagOfHostIf(rtag, name)
			if !ok || keep(jt) {
				continue
			}
			if err := deleteLink(name); err != nil {
				errs = append(errs, err)
				continue
			}
			m.log.Info("removed leftover veth", "veth", name)
		}
		if err := m.cfg.Firewall.Sweep(ctx, m.cfg.RunnerID, keep); err != nil {
			errs = append(errs, err)
		}
		// Under the pool's lock no write of it is under way: a temporary
		// file is what a process killed mid-write left.
		if err := m.pool.removeTemps(); err != nil {
			errs = append(errs, err)
		}
		if len(errs) > 0 || len(dead) == 0 {
			return false, nil
		}
		st.Allocations = deleteWhere(st.Allocations, func(a allocation) bool {
			return a.RunnerID == m.cfg.RunnerID && !live[a.HostIf] && !processAlive(a.PID, a.PIDStart)
		})
		for _, a := range dead {
			m.log.Info("released leftover allocation", "job", a.JobID, "prefix", a.Prefix, "pid", a.PID)
		}
		return true, nil
	})
	errs = append(errs, err, m.sweepNetNS())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweeping runner %s: %w", m.cfg.RunnerID, err)
	}
	return nil
}

// linkList lists the host's links. A dump interrupted by a concurrent
// change (other jobs' veths come and go) is asked again: its result may
// be incomplete.
func linkList() ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		if links, err = netlink.LinkList(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
	}
	return nil, err
}
