package docker

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/internal/nsenter"
)

const (
	termSignal = syscall.SIGTERM
	killSignal = syscall.SIGKILL
)

// proc is one host process as seen in /proc.
type proc struct {
	pid, ppid int
}

// procRoot is where the host's processes are listed (tests point it
// elsewhere to make listing fail).
var procRoot = "/proc"

// processesIn lists host processes whose pid namespace is pidns.
func processesIn(pidns string) ([]proc, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ns, err := os.Readlink(procRoot + "/" + e.Name() + "/ns/pid")
		if err != nil || ns != pidns {
			continue
		}
		ppid, state, err := statOf(pid)
		if err != nil || state == "Z" || state == "X" {
			continue // exited meanwhile, or a zombie waiting to be reaped
		}
		out = append(out, proc{pid: pid, ppid: ppid})
	}
	return out, nil
}

// statOf returns a process's parent pid and state letter.
func statOf(pid int) (int, string, error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", err
	}
	// The command name may contain spaces and parentheses: fields start
	// after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, "", errors.New("malformed stat")
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, f[0], err
}

// idleTree returns the container's init, the idle entrypoint (init's first
// child) and, when tree is set, the idle entrypoint's descendants: the
// processes that are not the job's. The shell entrypoint's children are
// its sleeps; the step server's children are the job's steps (tree unset).
func idleTree(procs []proc, initPID, idlePID int, tree bool) map[int]bool {
	keep := map[int]bool{initPID: true}
	if idlePID == 0 {
		return keep
	}
	keep[idlePID] = true
	if !tree {
		return keep
	}
	for changed := true; changed; {
		changed = false
		for _, p := range procs {
			if !keep[p.pid] && keep[p.ppid] && p.ppid != initPID {
				keep[p.pid] = true
				changed = true
			}
		}
	}
	return keep
}

// jobProcesses lists the pids of the job's processes in the container: all
// in its pid namespace except init and the idle entrypoint's tree.
func jobProcesses(initPID, idlePID int, pidns string, tree bool) ([]int, error) {
	procs, err := processesIn(pidns)
	if err != nil {
		return nil, err
	}
	keep := idleTree(procs, initPID, idlePID, tree)
	var out []int
	for _, p := range procs {
		if !keep[p.pid] {
			out = append(out, p.pid)
		}
	}
	return out, nil
}

// signalJob sends sig to every job process of the container.
func signalJob(initPID, idlePID int, pidns string, tree bool, sig syscall.Signal) error {
	pids, err := jobProcesses(initPID, idlePID, pidns, tree)
	if err != nil {
		return fmt.Errorf("finding job processes: %w", err)
	}
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signalling pid %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}

// findIdle waits for the container's init to start the idle entrypoint and
// returns its pid.
func findIdle(initPID int, pidns string, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		procs, err := processesIn(pidns)
		if err != nil {
			return 0, err
		}
		for _, p := range procs {
			if p.ppid == initPID {
				return p.pid, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, errors.New("the idle entrypoint did not start")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// openIdle returns a pidfd of the idle entrypoint pid, or -1 when it
// cannot be had (no pidfd on this kernel) or pid is no longer the child
// of init in pidns that findIdle saw (it died and the pid was reused
// before the pidfd was opened).
func openIdle(pid, initPID int, pidns string) int {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	// The pidfd holds the process from here; check that it is the one.
	ns, err := os.Readlink(procRoot + "/" + strconv.Itoa(pid) + "/ns/pid")
	ppid, _, serr := statOf(pid)
	if err != nil || serr != nil || ns != pidns || ppid != initPID {
		_ = unix.Close(fd)
		return -1
	}
	return fd
}

// ownNetNS fails unless process pid has a network namespace other than
// the host's (the executor's own, read on a locked thread: another
// goroutine's thread may be inside a job's namespace).
func ownNetNS(pid int) error {
	job, err := netns.GetFromPid(pid)
	if err != nil {
		return fmt.Errorf("reading the network namespace: %w", err)
	}
	defer job.Close()
	host, err := nsenter.IsOwn(job)
	if err != nil {
		return fmt.Errorf("reading the host's network namespace: %w", err)
	}
	if host {
		return fmt.Errorf("the engine gave the container the host's network namespace (%s)", job)
	}
	return nil
}
