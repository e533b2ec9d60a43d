package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	ctrd "github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"

	"github.com/airlock-ci/airlock/executors/containerd"
)

// containerdTimeout bounds the containerd checks.
const containerdTimeout = 10 * time.Second

// sharedNamespaces belong to other tools on the same daemon.
var sharedNamespaces = map[string]string{"default": "ctr's", "moby": "Docker's", "k8s.io": "Kubernetes'", "buildkit": "BuildKit's"}

// checkContainerd checks the containerd executor's daemon: the socket, the
// namespace, the snapshotter and the runtime. When containerd is not the
// selected executor, one line of information says whether it would work.
func checkContainerd(ctx context.Context, e *Env, cfg containerd.Config, selected bool) []Result {
	rs := containerdResults(ctx, e, cfg)
	if selected {
		return rs
	}
	// One line saying whether executor = "containerd" would work.
	r := Result{Name: "containerd", Status: Info, Detail: "not used (executor = docker); would work: " + rs[0].Detail}
	for _, x := range rs {
		if x.Status > Info {
			r.Detail, r.Fix = "not used (executor = docker); "+x.Detail, x.Fix
			break
		}
	}
	return []Result{r}
}

func containerdResults(ctx context.Context, e *Env, cfg containerd.Config) []Result {
	addr := cfg.ResolvedAddress()
	ns := cfg.Namespace
	if ns == "" {
		ns = containerd.DefaultNamespace
	}
	sock := Result{Name: "containerd"}
	fixSock := fmt.Sprintf("start containerd (systemctl start containerd) or set [containerd] address; the daemon under Docker listens on %s", containerd.DockerAddress)
	if _, err := os.Stat(e.path(addr)); err != nil {
		sock.Status, sock.Detail, sock.Fix = Fail, fmt.Sprintf("no socket at %s", addr), fixSock
		return []Result{sock}
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, ns), containerdTimeout)
	defer cancel()
	cli, err := ctrd.New(e.path(addr), ctrd.WithTimeout(containerdTimeout))
	var v ctrd.Version
	if err == nil {
		v, err = cli.Version(ctx)
	}
	if err != nil {
		sock.Status, sock.Detail, sock.Fix = Fail, fmt.Sprintf("containerd at %s does not answer: %s", addr, oneLine(err.Error())), fixSock
		if errors.Is(err, syscall.EACCES) || strings.Contains(err.Error(), "permission denied") {
			sock.Fix = "run airlock doctor as root (the service runs as root)"
		}
		if cli != nil {
			cli.Close()
		}
		return []Result{sock}
	}
	defer cli.Close()
	sock.Detail = fmt.Sprintf("containerd %s at %s", v.Version, addr)
	rs := []Result{sock}

	nsr := Result{Name: "containerd ns"}
	names, err := cli.NamespaceService().List(ctx)
	switch {
	case err != nil:
		nsr.Status, nsr.Detail, nsr.Fix = Fail, "listing namespaces: "+oneLine(err.Error()), "check containerd's log (journalctl -u containerd)"
	case sharedNamespaces[ns] != "":
		nsr.Status = Warn
		nsr.Detail = fmt.Sprintf("namespace %q is %s", ns, sharedNamespaces[ns])
		nsr.Fix = `set [containerd] namespace to one of Airlock's own (default "airlock")`
	case contains(names, ns):
		ctrs, _ := cli.Containers(ctx)
		imgs, _ := cli.ImageService().List(ctx)
		nsr.Detail = fmt.Sprintf("namespace %s: %d images, %d containers", ns, len(imgs), len(ctrs))
	default:
		nsr.Detail = fmt.Sprintf("namespace %s does not exist yet (made by the first job)", ns)
	}
	rs = append(rs, nsr)

	snap := cfg.Snapshotter
	if snap == "" {
		snap = containerd.DefaultSnapshotter
	}
	sr := Result{Name: "snapshotter"}
	resp, err := cli.IntrospectionService().Plugins(ctx, []string{fmt.Sprintf(`type==io.containerd.snapshotter.v1,id==%s`, snap)})
	switch {
	case err != nil:
		sr.Status, sr.Detail, sr.Fix = Fail, "listing plugins: "+oneLine(err.Error()), "check containerd's log (journalctl -u containerd)"
	case len(resp.Plugins) == 0:
		sr.Status, sr.Detail = Fail, fmt.Sprintf("containerd has no snapshotter %q", snap)
		sr.Fix = "set [containerd] snapshotter to one `ctr plugins ls` shows as ok (overlayfs, or native anywhere)"
	case resp.Plugins[0].InitErr != nil:
		sr.Status, sr.Detail = Fail, fmt.Sprintf("snapshotter %s failed to load: %s", snap, oneLine(resp.Plugins[0].InitErr.Message))
		sr.Fix = "set [containerd] snapshotter to one `ctr plugins ls` shows as ok (native works anywhere)"
	default:
		sr.Detail = "snapshotter " + snap + " loaded"
	}
	rs = append(rs, sr)
	return append(rs, checkContainerdRuntime(e, cfg.Runtime))
}

// checkContainerdRuntime looks for the runtime's shim binary the way
// containerd names it (io.containerd.runc.v2: containerd-shim-runc-v2).
func checkContainerdRuntime(e *Env, runtime string) Result {
	if runtime == "" {
		runtime = containerd.DefaultRuntime
	}
	r := Result{Name: "runtime"}
	parts := strings.Split(runtime, ".")
	if len(parts) < 2 {
		r.Status, r.Detail = Fail, fmt.Sprintf("runtime %q is not a shim name like io.containerd.runc.v2", runtime)
		r.Fix = "set [containerd] runtime = \"io.containerd.runc.v2\""
		return r
	}
	shim := "containerd-shim-" + strings.Join(parts[len(parts)-2:], "-")
	path, err := e.Cmd.LookPath(shim)
	if err != nil {
		r.Status, r.Detail = Fail, fmt.Sprintf("runtime %s: no %s in PATH", runtime, shim)
		r.Fix = "install containerd's runc shim (apt-get install containerd runc) or set [containerd] runtime"
		return r
	}
	if _, err := e.Cmd.LookPath("runc"); err != nil && strings.Contains(runtime, "runc") {
		r.Status, r.Detail, r.Fix = Fail, fmt.Sprintf("runtime %s: shim %s found, but no runc", runtime, path), "apt-get install runc"
		return r
	}
	r.Detail = fmt.Sprintf("runtime %s (%s)", runtime, path)
	return r
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
