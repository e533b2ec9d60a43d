// Package procs identifies processes across pid reuse, so that recovery
// only touches resources whose owning process is gone: several Airlock
// processes (concurrent `airlock exec`, the agent) share one host and one
// state directory.
package procs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Owner is a process: its pid and its start time (clock ticks since boot),
// which together survive pid reuse.
type Owner struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"pid_start"`
}

// Self returns the calling process.
func Self() (Owner, error) {
	pid := os.Getpid()
	start, err := StartTime(pid)
	if err != nil {
		return Owner{}, fmt.Errorf("reading own start time: %w", err)
	}
	return Owner{PID: pid, Start: start}, nil
}

// Alive reports whether the owner process still runs.
func (o Owner) Alive() bool {
	if o.PID <= 0 {
		return false
	}
	got, err := StartTime(o.PID)
	return err == nil && got == o.Start
}

// String renders the owner as "pid:start" (a label value).
func (o Owner) String() string { return strconv.Itoa(o.PID) + ":" + strconv.FormatUint(o.Start, 10) }

// Parse reads an owner rendered by String.
func Parse(s string) (Owner, error) {
	p, st, ok := strings.Cut(s, ":")
	pid, err1 := strconv.Atoi(p)
	start, err2 := strconv.ParseUint(st, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return Owner{}, fmt.Errorf("owner %q: want pid:start", s)
	}
	return Owner{PID: pid, Start: start}, nil
}

// StartTime returns the start time of process pid in clock ticks since
// boot (field 22 of /proc/PID/stat).
func StartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}
