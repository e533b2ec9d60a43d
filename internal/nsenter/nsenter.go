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
	return locked(func(orig netns.NsHandle) error {
		// Compared on the locked thread: an unlocked goroutine may read the
		// namespace of a thread that another goroutine has just moved.
		if notOwn && orig.Equal(target) {
			return errors.New("refusing to enter the caller's own network namespace")
		}
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("entering network namespace: %w", err)
		}
		return fn()
	})
}

// locked runs do on a locked OS thread, then returns the thread to the
// namespace it started in (do may have moved it: entered or created one)
// and unlocks it. A thread that cannot go back stays locked, so the Go
// runtime discards it with its goroutine.
func locked(do func(orig netns.NsHandle) error) error {
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
		derr := do(orig)
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(derr, fmt.Errorf("returning to the original network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- derr
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

// Own returns the caller's own network namespace, read on a locked thread.
// netns.Get on an unlocked goroutine is not safe when other goroutines
// enter namespaces: it reads /proc/PID/task/TID/ns/net of the thread it
// ran on a moment before, and between the two the goroutine may move and
// that thread be locked by a goroutine that has entered a job's namespace.
// The caller would then seem to be in the job's namespace.
func Own() (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h, err := netns.Get()
	if err != nil {
		return netns.None(), fmt.Errorf("getting own network namespace: %w", err)
	}
	return h, nil
}

// IsOwn reports whether target is the caller's own network namespace
// (read as Own does).
func IsOwn(target netns.NsHandle) (bool, error) {
	self, err := Own()
	if err != nil {
		return false, err
	}
	defer self.Close()
	return self.Equal(target), nil
}

// CreateNamed creates the named namespace /run/netns/NAME on a locked OS
// thread (creating it moves the thread into it) and moves the thread back.
func CreateNamed(name string) error {
	return locked(func(netns.NsHandle) error {
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		return err
	})
}
