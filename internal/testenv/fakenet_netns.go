package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/internal/nsenter"
)

var nsCounter atomic.Int64

// NewNetNS creates a named network namespace that stands in for a job
// container and returns its path (/var/run/netns/NAME). The name carries
// the test process's pid. It is deleted in t.Cleanup, which also checks
// that it is gone.
func NewNetNS(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), nsCounter.Add(1))
	if err := CreateNamedNS(name); err != nil {
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	path := filepath.Join("/var/run/netns", name)
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting network namespace %s: %v", name, err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("network namespace %s still exists after cleanup (stat: %v)", path, err)
		}
	})
	return path
}

// CreateNamedNS creates the named namespace /var/run/netns/NAME on a
// locked thread and moves the thread back to its original namespace.
// NewNetNS is the same with cleanup; benchmarks that delete namespaces
// per iteration call this.
func CreateNamedNS(name string) error { return nsenter.CreateNamed(name) }

// InNetNS runs fn on a locked OS thread inside the namespace at path.
// Sockets opened by fn stay in that namespace.
func InNetNS(path string, fn func() error) error { return nsenter.RunPath(path, false, fn) }

var hostNS struct {
	once sync.Once
	path string
}

// HostNetNS returns a path naming the test process's own network
// namespace: that of a thread kept for it, locked and never moved.
// /proc/PID/ns/net would name the main thread's, and a goroutine that
// locks the main thread to enter a job's namespace moves it.
func HostNetNS() string {
	hostNS.once.Do(func() {
		tid := make(chan int)
		go func() {
			runtime.LockOSThread()
			tid <- unix.Gettid()
			select {}
		}()
		hostNS.path = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), <-tid)
	})
	return hostNS.path
}
