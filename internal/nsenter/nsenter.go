// Package nsenter runs code inside another network namespace on a locked
// OS thread, the one safe way to do it in Go: a thread's namespace follows
// it, goroutines move between threads, and processes, sockets and
// /proc/sys/net writes made from that thread belong to the namespace it is in.
package nsenter

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Run runs fn on a locked OS thread that has entered target. Processes
// started by fn inherit the namespace; sockets opened by fn stay in it. If
// the thread cannot return to its original namespace it stays locked, so
// the Go runtime discards it with its goroutine.
func Run(target netns.NsHandle, fn func() error) error { return run(target, false, fn) }

func run(target netns.NsHandle, notOwn bool, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting current network namespace: %w", err)
			return
		}
		defer orig.Close()
		// Compared on the locked thread: an unlocked goroutine may read the
		// namespace of a thread that another goroutine has just moved.
		if notOwn && orig.Equal(target) {
			runtime.UnlockOSThread()
			errc <- errors.New("refusing to enter the caller's own network namespace")
			return
		}
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// RunPath is Run for the namespace at path (/proc/PID/ns/net,
// /run/netns/NAME). With notOwn, entering the caller's own namespace is
// refused: whatever fn does there would hit the host.
func RunPath(path string, notOwn bool, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer target.Close()
	if err := run(target, notOwn, fn); err != nil {
		return fmt.Errorf("in network namespace %s: %w", path, err)
	}
	return nil
}
