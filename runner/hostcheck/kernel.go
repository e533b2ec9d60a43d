package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetNSProbe is what ProbeNetNS found in a throwaway network namespace.
// A nil error means the operation worked.
type NetNSProbe struct {
	// NetNS: creating the namespace itself. When it failed the other
	// fields are meaningless.
	NetNS error
	// Veth: creating and deleting a veth pair.
	Veth error
	// DisableIPv6: writing net.ipv6.conf.<veth>.disable_ipv6.
	DisableIPv6 error
	// PingGroupRange: writing net.ipv4.ping_group_range ("1 0").
	PingGroupRange error
}

// The probe's veth pair; it only ever exists in the throwaway namespace.
const (
	probeVeth     = "airlock-p0"
	probeVethPeer = "airlock-p1"
)

func checkNetNS(e *Env) Result {
	r := Result{Name: "network namespaces"}
	if _, err := os.Stat(e.path("/proc/self/ns/net")); err != nil {
		r.Status = Fail
		r.Detail = fmt.Sprintf("/proc/self/ns/net: %v", err)
		r.Fix = "use a kernel built with CONFIG_NET_NS=y (every distribution kernel is)"
		return r
	}
	r.Detail = "supported"
	return r
}

// checkKernel checks veth, the IPv6 sysctls and ping_group_range. As root
// it exercises them in a throwaway namespace; otherwise it looks for
// their traces and warns that it could not probe.
func checkKernel(ctx context.Context, e *Env) []Result {
	veth := Result{Name: "veth"}
	ipv6 := Result{Name: "ipv6 sysctls"}
	ping := Result{Name: "ping_group_range"}

	_, v6err := os.Stat(e.path("/proc/sys/net/ipv6/conf/all/disable_ipv6"))
	if e.Euid() != 0 {
		const fix = "run airlock doctor as root to probe it"
		veth.Status, veth.Fix = Warn, fix
		if _, err := os.Stat(e.path("/sys/module/veth")); err == nil {
			veth.Detail = "veth module loaded; not probed (needs root)"
		} else {
			veth.Detail = "not probed (needs root); veth module not loaded (it may be built in or load on demand)"
		}
		ping.Status, ping.Detail, ping.Fix = Warn, "not probed (needs root)", fix
		ipv6 = ipv6Result(ipv6, v6err, nil, false)
		return []Result{veth, ipv6, ping}
	}

	p := e.ProbeNetNS(ctx)
	if p.NetNS != nil {
		for _, r := range []*Result{&veth, &ipv6, &ping} {
			r.Status = Fail
			r.Detail = "cannot create a network namespace: " + p.NetNS.Error()
			r.Fix = "run as root outside a restricted container (CAP_SYS_ADMIN, CAP_NET_ADMIN needed)"
		}
		return []Result{veth, ipv6, ping}
	}
	if p.Veth != nil {
		veth.Status = Fail
		veth.Detail = "creating a veth pair in a throwaway namespace: " + p.Veth.Error()
		veth.Fix = "load the veth module (modprobe veth) or use a kernel with CONFIG_VETH"
	} else {
		veth.Detail = "created and deleted a veth pair in a throwaway namespace"
	}
	ipv6 = ipv6Result(ipv6, v6err, p.DisableIPv6, true)
	if p.PingGroupRange != nil {
		ping.Status = Fail
		ping.Detail = "writing net.ipv4.ping_group_range in a namespace: " + p.PingGroupRange.Error()
		ping.Fix = "use a kernel ≥ 3.0 with a writable /proc/sys (not ProtectKernelTunables=, not a read-only /proc/sys)"
	} else {
		ping.Detail = "writable in a job namespace"
	}
	return []Result{veth, ipv6, ping}
}

func ipv6Result(r Result, statErr, writeErr error, probed bool) Result {
	switch {
	case errors.Is(statErr, os.ErrNotExist):
		r.Status = Info
		r.Detail = "IPv6 is disabled in the kernel (ipv6.disable=1): jobs have no IPv6 to disable"
	case statErr != nil:
		r.Status = Warn
		r.Detail = "reading net.ipv6.conf.all.disable_ipv6: " + statErr.Error()
		r.Fix = "check that /proc/sys is mounted and readable"
	case writeErr != nil:
		r.Status = Fail
		r.Detail = "writing disable_ipv6 on a veth: " + writeErr.Error()
		r.Fix = "make /proc/sys writable for Airlock (no ProtectKernelTunables=, no read-only /proc/sys)"
	case !probed:
		r.Detail = "present (writing them not probed: needs root)"
	default:
		r.Detail = "present; disable_ipv6 writable on a veth"
	}
	return r
}

// probeNetNS runs the probe on a locked OS thread that it moves into a new
// network namespace. The thread is never unlocked: it exits with its
// goroutine, and the namespace (with anything left in it) goes with it,
// so nothing can leak onto the host.
func probeNetNS(ctx context.Context) NetNSProbe {
	ch := make(chan NetNSProbe, 1)
	go func() {
		runtime.LockOSThread()
		ch <- probeInNewNetNS()
	}()
	select {
	case p := <-ch:
		return p
	case <-ctx.Done():
		return NetNSProbe{NetNS: ctx.Err()}
	}
}

func probeInNewNetNS() NetNSProbe {
	var p NetNSProbe
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		p.NetNS = fmt.Errorf("creating a network namespace: %w", err)
		return p
	}
	// netlink's package functions open a socket per request in the
	// calling thread's namespace, and /proc/sys/net follows the thread's
	// namespace too.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: probeVeth}, PeerName: probeVethPeer}
	if err := netlink.LinkAdd(veth); err != nil {
		p.Veth = err
		p.DisableIPv6 = errors.New("not tried (no veth)")
	} else {
		if _, err := os.Stat("/proc/sys/net/ipv6"); err == nil {
			p.DisableIPv6 = os.WriteFile("/proc/sys/net/ipv6/conf/"+probeVeth+"/disable_ipv6", []byte("1"), 0o644)
		}
		if err := netlink.LinkDel(veth); err != nil {
			p.Veth = fmt.Errorf("deleting the veth pair: %w", err)
		}
	}
	p.PingGroupRange = os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("1 0"), 0o644)
	return p
}
