package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/internal/atomicfile"
	"github.com/airlock-ci/airlock/internal/nsenter"
	"github.com/airlock-ci/airlock/internal/procs"
	"github.com/airlock-ci/airlock/netpolicy"
)

// NetNSDir is where named network namespaces are mounted (iproute2's
// place, which `ip netns` shows).
const NetNSDir = "/var/run/netns"

// netnsPrefix starts the name of every job namespace Airlock creates.
const netnsPrefix = "airlock-"

// NetNSName is the name of a job's network namespace:
// "airlock-RUNNERTAG-JOBTAG".
func NetNSName(runnerID, jobID string) string {
	return netnsPrefix + netpolicy.RunnerTag(runnerID) + "-" + netpolicy.JobTag(jobID)
}

// ownerDir holds one owner record per namespace this host's Airlock
// processes created, beside the pool file.
func (m *Manager) ownerDir() string { return filepath.Join(filepath.Dir(m.cfg.PoolFile), "netns") }

// CreateNetNS creates the job's named network namespace
// (/var/run/netns/NAME) and returns its path, for an executor that starts
// the job's processes in it (executors.NamespaceJoiner) after Setup has
// plumbed and firewalled it. Its owner record (this process's pid and
// start time) is written first, so that a Sweep in another process never
// takes a namespace whose creator lives.
func (m *Manager) CreateNetNS(jobID string) (string, error) {
	if jobID == "" {
		return "", errors.New("creating network namespace: job id is empty")
	}
	name := NetNSName(m.cfg.RunnerID, jobID)
	owner, err := procs.Self()
	if err != nil {
		return "", fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	if err := os.MkdirAll(m.ownerDir(), 0o700); err != nil {
		return "", fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	rec := filepath.Join(m.ownerDir(), name)
	if err := atomicfile.CreateOnce(rec, []byte(owner.String()+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("creating network namespace %s: recording its owner: %w", name, err)
	}
	if err := nsenter.CreateNamed(name); err != nil {
		return "", errors.Join(fmt.Errorf("creating network namespace %s: %w", name, err), m.deleteNetNS(name))
	}
	m.log.Debug("network namespace created", "job", jobID, "netns", name)
	return filepath.Join(NetNSDir, name), nil
}

// DeleteNetNS removes the job's named namespace (the namespace itself
// lives on while a process is still in it) and its owner record. A
// namespace already gone is not an error.
func (m *Manager) DeleteNetNS(jobID string) error {
	return m.deleteNetNS(NetNSName(m.cfg.RunnerID, jobID))
}

func (m *Manager) deleteNetNS(name string) error {
	var errs []error
	path := filepath.Join(NetNSDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		errs = append(errs, fmt.Errorf("unmounting network namespace %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing network namespace %s: %w", path, err))
	}
	if len(errs) == 0 {
		// The record goes last: a namespace without one is never taken
		// for a dead owner's while it is being created.
		if err := os.Remove(filepath.Join(m.ownerDir(), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing owner record of network namespace %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// sweepNetNS removes this runner's named namespaces whose owner is dead,
// and dead owners' records whose namespace is gone. Namespaces of live
// owners and of other runners are never touched.
func (m *Manager) sweepNetNS() error {
	prefix := netnsPrefix + netpolicy.RunnerTag(m.cfg.RunnerID) + "-"
	names := map[string]bool{}
	for _, dir := range []string{NetNSDir, m.ownerDir()} {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("listing %s: %w", dir, err)
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				names[e.Name()] = true
			}
		}
	}
	var errs []error
	for name := range names {
		b, err := os.ReadFile(filepath.Join(m.ownerDir(), name))
		if err == nil {
			if o, perr := procs.Parse(strings.TrimSpace(string(b))); perr == nil && o.Alive() {
				continue
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("reading owner of network namespace %s: %w", name, err))
			continue
		}
		if err := m.deleteNetNS(name); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("removed leftover network namespace", "netns", name)
	}
	return errors.Join(errs...)
}
