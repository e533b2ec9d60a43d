package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/airlock-ci/airlock/netpolicy"
)

// Sweep removes what this runner's dead processes left behind: host veths
// named with this runner's tag, their firewall rules and chains, and their
// pool allocations. An allocation is dead when its owner process (pid and
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

		links, err := netlink.LinkList()
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
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweeping runner %s: %w", m.cfg.RunnerID, err)
	}
	return nil
}
