package hostcheck

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// kernelClockSynced asks the kernel (adjtimex, read-only) whether an NTP
// daemon (chrony, ntpd, systemd-timesyncd) keeps the clock synchronized;
// timedatectl's "System clock synchronized" comes from the same place.
func kernelClockSynced() (bool, error) {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return false, fmt.Errorf("reading the kernel clock state: %w", err)
	}
	return state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0, nil
}

// checkClock: a clock before the binary's build time is certainly wrong
// (TLS certificates, token lifetimes and audit times all depend on it);
// an unsynchronized one is a warning.
func checkClock(e *Env, built time.Time) Result {
	r := Result{Name: "clock"}
	now := e.Now()
	if !built.IsZero() && now.Before(built) {
		r.Status = Fail
		r.Detail = fmt.Sprintf("the clock says %s, before this binary was built (%s)", now.UTC().Format(time.RFC3339), built.UTC().Format(time.RFC3339))
		r.Fix = "set the time and enable NTP: timedatectl set-ntp true (or chronyc makestep)"
		return r
	}
	synced, err := e.ClockSynced()
	switch {
	case err != nil:
		r.Status = Info
		r.Detail = "synchronization unknown: " + err.Error()
	case !synced:
		r.Status = Warn
		r.Detail = fmt.Sprintf("%s, but not synchronized by NTP", now.UTC().Format(time.RFC3339))
		r.Fix = "enable time synchronization: timedatectl set-ntp true (or install chrony)"
	default:
		r.Detail = now.UTC().Format(time.RFC3339) + ", synchronized"
	}
	return r
}
