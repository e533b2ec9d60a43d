// Command airlock-stepd is the step server of Airlock's Docker executor:
// the idle entrypoint of a job container, which starts the job's steps as
// the host asks over its stdin (see executors/stepd). It is bind-
// mounted read-only into every job container and must be static. As
// `airlock-stepd exec-env CMD...` it is instead the entrypoint of a
// service container with secret variables: it reads them from stdin and
// execs the service's own command with them. As `airlock-stepd hold` it
// is a network holder's only process: it waits to be stopped.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/airlock-ci/airlock/executors/stepd"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == stepd.ExecEnvArg {
		// A service's entrypoint: its variables on stdin, then its own
		// command in this process's place.
		err := stepd.ExecEnv(os.Stdin, os.Args[2:])
		fmt.Fprintln(os.Stderr, "airlock-stepd:", err)
		os.Exit(127)
	}
	if len(os.Args) == 2 && os.Args[1] == stepd.HoldArg {
		// PID 1 of a holder: the kernel delivers it only the signals it
		// handles, so it ends on these and ignores the rest.
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		os.Exit(0)
	}
	// Not dumpable: job code running as the same user cannot open this
	// process's stdin or stdout through /proc, nor read its memory.
	if err := prctl(syscall.PR_SET_DUMPABLE, 0); err != nil {
		fmt.Fprintln(os.Stderr, "airlock-stepd: PR_SET_DUMPABLE:", err)
		os.Exit(125)
	}
	// Stopping the container sends SIGTERM: the server ends at once (the
	// engine kills what is left), as the shell idle entrypoint does.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		os.Exit(0)
	}()
	srv := stepd.NewServer(os.Stdout, os.Environ())
	if os.Getpid() == 1 {
		// The container's init (containerd starts no other): reap what
		// ends in it, orphans included.
		sigchld := make(chan os.Signal, 16)
		signal.Notify(sigchld, syscall.SIGCHLD)
		srv.Reap(sigchld)
	}
	if err := srv.Serve(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "airlock-stepd:", err)
		os.Exit(125)
	}
	// The host went away: stay, as the idle entrypoint would, until the
	// container is stopped.
	select {}
}

func prctl(op, arg uintptr) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, op, arg, 0); e != 0 {
		return e
	}
	return nil
}
