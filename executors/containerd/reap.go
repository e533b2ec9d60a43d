package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/errdefs"

	"github.com/airlock-ci/airlock/executors"
)

// remove takes away everything of container id: its task (every process
// killed), the container record, its snapshot and its cgroups. What is
// already gone is not an error.
func (e *Executor) remove(ctx context.Context, id string) error {
	ctx = e.ctx(ctx)
	var errs []error
	ctr, err := e.cli.LoadContainer(ctx, id)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		errs = append(errs, fmt.Errorf("loading container %s: %w", id, err))
	default:
		if task, err := ctr.Task(ctx, nil); err == nil {
			errs = append(errs, e.endTask(ctx, task, nil))
		} else if !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("loading task %s: %w", id, err))
		}
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting container %s: %w", id, err))
		}
	}
	// A create that failed between the snapshot and the record leaves the
	// snapshot alone.
	if err := e.cli.SnapshotService(e.cfg.Snapshotter).Remove(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("removing snapshot %s: %w", id, err))
	}
	errs = append(errs, e.removeCgroups(id))
	return errors.Join(errs...)
}

// cgroupDirs returns the directory of cgroup name under the namespace's
// cgroup parent in every hierarchy (cgroup v1), or in the unified tree.
func (e *Executor) cgroupDirs(name string) []string {
	root := e.cfg.CgroupRoot
	rel := filepath.Join(e.cfg.Namespace, name)
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return []string{filepath.Join(root, rel)}
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var out []string
	for _, d := range ents {
		if d.Type()&os.ModeSymlink != 0 || !d.IsDir() {
			continue // cpu -> cpu,cpuacct and the like
		}
		out = append(out, filepath.Join(root, d.Name(), rel))
	}
	return out
}

// procsFile is the file listing the processes of container id's pids
// cgroup.
func (e *Executor) procsFile(id string) string {
	root := e.cfg.CgroupRoot
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return filepath.Join(root, e.cfg.Namespace, id, "cgroup.procs")
	}
	return filepath.Join(root, "pids", e.cfg.Namespace, id, "cgroup.procs")
}

// removeCgroups removes the (empty) cgroups of container id in every
// hierarchy: with cgroupfs, deleting a task leaves them behind. A cgroup
// still holding processes is retried briefly: the kernel frees it a moment
// after its last process is reaped.
func (e *Executor) removeCgroups(id string) error {
	var errs []error
	for _, dir := range e.cgroupDirs(id) {
		var err error
		for i := 0; i < 50; i++ {
			err = syscall.Rmdir(dir)
			if err != syscall.EBUSY {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil && err != syscall.ENOENT {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveNamespaceCgroups removes the namespace's own cgroup directories
// where they are empty (every job's is gone); a busy one is kept.
func (e *Executor) RemoveNamespaceCgroups() error {
	var errs []error
	for _, dir := range e.cgroupDirs("") {
		if err := syscall.Rmdir(dir); err != nil && err != syscall.ENOENT && err != syscall.EBUSY && err != syscall.ENOTEMPTY {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// Leftovers implements executors.Reaper: the containers labelled with
// runnerID, and cgroups named for runnerID's containers whose container is
// gone (a crash between the task's and the cgroup's removal).
func (e *Executor) Leftovers(ctx context.Context, runnerID string) ([]executors.Leftover, error) {
	ctx = e.ctx(ctx)
	list, err := e.cli.Containers(ctx, fmt.Sprintf("labels.%q==%s", executors.LabelRunner, runnerID))
	if err != nil {
		return nil, fmt.Errorf("listing containers of runner %s in namespace %s: %w", runnerID, e.cfg.Namespace, err)
	}
	var out []executors.Leftover
	seen := map[string]bool{}
	for _, c := range list {
		labels, err := c.Labels(ctx)
		if err != nil {
			if errdefs.IsNotFound(err) {
				continue
			}
			return nil, fmt.Errorf("reading labels of container %s: %w", c.ID(), err)
		}
		if labels[executors.LabelRunner] != runnerID {
			continue
		}
		seen[c.ID()] = true
		out = append(out, executors.Leftover{ID: c.ID(), JobID: labels[executors.LabelJob], Labels: labels})
	}
	prefix := IDPrefix(runnerID)
	for _, dir := range e.cgroupDirs("") {
		ents, _ := os.ReadDir(dir)
		for _, d := range ents {
			if !d.IsDir() || !strings.HasPrefix(d.Name(), prefix) || seen[d.Name()] {
				continue
			}
			if _, err := e.cli.LoadContainer(ctx, d.Name()); err == nil {
				continue // made after the listing
			}
			seen[d.Name()] = true
			out = append(out, executors.Leftover{ID: d.Name()})
		}
	}
	return out, nil
}

// RemoveLeftover implements executors.Reaper.
func (e *Executor) RemoveLeftover(ctx context.Context, l executors.Leftover) error {
	if !strings.HasPrefix(l.ID, "airlock-") {
		return fmt.Errorf("removing leftover %q: not an Airlock container", l.ID)
	}
	return e.remove(ctx, l.ID)
}
