package hostcheck

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// mkfile creates root+p (and its parents).
func mkfile(t *testing.T, root, p string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCheckNetNS(t *testing.T) {
	e := fakeEnv(t, nil)
	wantResult(t, checkNetNS(e), Fail, "/proc/self/ns/net", "CONFIG_NET_NS")
	mkfile(t, e.Root, "/proc/self/ns/net")
	wantResult(t, checkNetNS(e), OK, "supported", "")
}

func TestCheckRoot(t *testing.T) {
	e := fakeEnv(t, nil)
	wantResult(t, checkRoot(e), OK, "root", "")
	e.Euid = func() int { return 1000 }
	wantResult(t, checkRoot(e), Fail, "uid 1000", "sudo")
}

func TestCheckKernel(t *testing.T) {
	type want struct {
		status      Status
		detail, fix string
	}
	eperm := errors.New("operation not permitted")
	tests := []struct {
		name              string
		euid              int
		ipv6              bool // /proc/sys/net/ipv6/... exists
		vethModule        bool
		probe             NetNSProbe
		veth, ipv6w, ping want
	}{
		{
			name: "all good", ipv6: true,
			veth:  want{OK, "created and deleted", ""},
			ipv6w: want{OK, "disable_ipv6 writable", ""},
			ping:  want{OK, "writable", ""},
		},
		{
			name:  "ipv6 off in the kernel",
			veth:  want{OK, "created", ""},
			ipv6w: want{Info, "ipv6.disable=1", ""},
			ping:  want{OK, "writable", ""},
		},
		{
			name: "no netns", ipv6: true, probe: NetNSProbe{NetNS: eperm},
			veth:  want{Fail, "cannot create a network namespace: operation not permitted", "CAP_SYS_ADMIN"},
			ipv6w: want{Fail, "cannot create", "CAP_SYS_ADMIN"},
			ping:  want{Fail, "cannot create", "CAP_SYS_ADMIN"},
		},
		{
			name: "no veth", ipv6: true, probe: NetNSProbe{Veth: errors.New("operation not supported"), DisableIPv6: errors.New("not tried (no veth)")},
			veth:  want{Fail, "operation not supported", "modprobe veth"},
			ipv6w: want{Fail, "not tried", "ProtectKernelTunables"},
			ping:  want{OK, "writable", ""},
		},
		{
			name: "read-only sysctls", ipv6: true, probe: NetNSProbe{DisableIPv6: errors.New("read-only file system"), PingGroupRange: errors.New("read-only file system")},
			veth:  want{OK, "created", ""},
			ipv6w: want{Fail, "read-only", "writable"},
			ping:  want{Fail, "read-only", "/proc/sys"},
		},
		{
			name: "not root, module loaded", euid: 1000, ipv6: true, vethModule: true,
			veth:  want{Warn, "veth module loaded; not probed", "as root"},
			ipv6w: want{OK, "not probed", ""},
			ping:  want{Warn, "not probed", "as root"},
		},
		{
			name: "not root, no module", euid: 1000, ipv6: true,
			veth:  want{Warn, "not loaded", "as root"},
			ipv6w: want{OK, "not probed", ""},
			ping:  want{Warn, "not probed", "as root"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEnv(t, nil)
			e.Euid = func() int { return tc.euid }
			probed := false
			e.ProbeNetNS = func(context.Context) NetNSProbe { probed = true; return tc.probe }
			if tc.ipv6 {
				mkfile(t, e.Root, "/proc/sys/net/ipv6/conf/all/disable_ipv6")
			}
			if tc.vethModule {
				mkfile(t, e.Root, "/sys/module/veth/refcnt")
			}
			rs := checkKernel(context.Background(), e)
			if len(rs) != 3 {
				t.Fatalf("checkKernel returned %d results, want 3", len(rs))
			}
			if probed != (tc.euid == 0) {
				t.Errorf("probed = %v with euid %d", probed, tc.euid)
			}
			for i, w := range []want{tc.veth, tc.ipv6w, tc.ping} {
				wantResult(t, rs[i], w.status, w.detail, w.fix)
			}
		})
	}
}
