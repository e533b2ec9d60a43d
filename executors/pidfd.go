package executors

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// PidfdAlive reports whether the process of pidfd fd still runs: a pidfd
// is readable once its process has ended (a zombie included). -1 (no
// pidfd) is true: cannot tell.
func PidfdAlive(fd int) bool {
	return !pidfdReadable(fd, 0)
}

// PidfdEnded reports whether the process of the pidfd *fd (read under mu,
// which guards its close) ends within wait. -1 (no pidfd) is false.
func PidfdEnded(mu sync.Locker, fd *int, wait time.Duration) bool {
	mu.Lock()
	own := -1
	if *fd >= 0 {
		own, _ = unix.FcntlInt(uintptr(*fd), unix.F_DUPFD_CLOEXEC, 0)
	}
	mu.Unlock()
	if own < 0 {
		return false
	}
	defer unix.Close(own)
	return pidfdReadable(own, wait)
}

func pidfdReadable(fd int, wait time.Duration) bool {
	if fd < 0 {
		return false
	}
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(p, int(wait.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// ErrContainerStopped is wrapped by an Exec that failed because the job's
// container stopped under it (its init ended: the job signalled it, the
// kernel's OOM killer), not at the caller's request: the job's doing.
var ErrContainerStopped = errors.New("the job's container stopped")

// ContainerStopped wraps err in ErrContainerStopped when the container's
// init, by its pidfd *fd (guarded by mu), ends within a second: the
// stream of an init that dies can end before its pidfd says so. Errors of
// a cancelled ctx are the caller's and stay as they are.
func ContainerStopped(ctx context.Context, err error, mu sync.Locker, fd *int) error {
	if err == nil || ctx.Err() != nil || errors.Is(err, ErrContainerStopped) || !PidfdEnded(mu, fd, time.Second) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrContainerStopped, err)
}
