package executors

import "golang.org/x/sys/unix"

// PidfdAlive reports whether the process of pidfd fd still runs: a pidfd
// is readable once its process has ended (a zombie included). -1 (no
// pidfd) is true: cannot tell.
func PidfdAlive(fd int) bool {
	if fd < 0 {
		return true
	}
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err != nil || n == 0
}
