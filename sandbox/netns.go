package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/airlock-ci/airlock/internal/nsenter"
)

// inNetNS runs fn on a locked OS thread that has entered target. Use it for
// what follows the thread's namespace (/proc/sys/net, sockets, exec); use
// netlink.NewHandleAt for link operations.
func inNetNS(target netns.NsHandle, fn func() error) error { return nsenter.Run(target, fn) }

// writeSysctls writes /proc/sys values (keys use "/" separators) in the
// calling thread's network namespace. A missing net/ipv6 key means the
// kernel has no IPv6, which is what disabling it wants.
//
// A value already in place is not written again: a write of an IPv6 conf
// takes the kernel's rtnl lock (and spins for it while other setups hold
// it), and Docker has set a job container's all/default values already.
func writeSysctls(kv map[string]string) error {
	var errs []error
	for k, v := range kv {
		if cur, err := os.ReadFile("/proc/sys/" + k); err == nil && strings.Join(strings.Fields(string(cur)), " ") == v {
			continue
		}
		err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644)
		if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(k, "net/ipv6/") {
			if _, serr := os.Stat("/proc/sys/net/ipv6"); errors.Is(serr, os.ErrNotExist) {
				continue
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("setting sysctl %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}
