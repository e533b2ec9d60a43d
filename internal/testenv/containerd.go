package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/errdefs"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// probeContainerd asks containerd's gRPC health service whether it serves.
func probeContainerd(sock string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health check answered %s", resp.Status)
	}
	return nil
}

var ctrdNSCounter atomic.Int64

// ContainerdNamespace returns a containerd namespace of the test's own
// (requires containerd). At cleanup it fails the test if a container or
// a lease is left in it or a cgroup of one of its containers remains,
// then removes everything: containers, images (their content and
// snapshots go with the garbage collection), leases, the namespace and
// its cgroup directories.
func ContainerdNamespace(t testing.TB) string {
	t.Helper()
	RequireContainerd(t)
	ns := fmt.Sprintf("airlock-test-%d-%d", os.Getpid(), ctrdNSCounter.Add(1))
	t.Cleanup(func() {
		if err := CleanContainerdNamespace(ns, true); err != nil {
			t.Errorf("cleaning containerd namespace %s: %v", ns, err)
		}
	})
	return ns
}

// cgroupNSDirs returns the namespace's cgroup parent in every hierarchy.
func cgroupNSDirs(ns string) []string {
	const root = "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return []string{filepath.Join(root, ns)}
	}
	ents, _ := os.ReadDir(root)
	var out []string
	for _, d := range ents {
		if d.IsDir() && d.Type()&os.ModeSymlink == 0 {
			out = append(out, filepath.Join(root, d.Name(), ns))
		}
	}
	return out
}

// CleanContainerdNamespace removes namespace ns with everything in it;
// strict reports what a job should not have left (containers, leases,
// cgroups) as errors.
func CleanContainerdNamespace(ns string, strict bool) error {
	cli, err := containerd.New(ContainerdSocket(), containerd.WithDefaultNamespace(ns))
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), 2*time.Minute)
	defer cancel()
	var errs []error
	ctrs, err := cli.Containers(ctx)
	errs = append(errs, err)
	for _, c := range ctrs {
		if strict {
			errs = append(errs, fmt.Errorf("container %s left", c.ID()))
		}
		if task, err := c.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, containerd.WithProcessKill)
		}
		errs = append(errs, c.Delete(ctx, containerd.WithSnapshotCleanup))
	}
	for _, dir := range cgroupNSDirs(ns) {
		ents, _ := os.ReadDir(dir)
		for _, d := range ents {
			if d.IsDir() {
				if strict {
					errs = append(errs, fmt.Errorf("cgroup %s/%s left", dir, d.Name()))
				}
				_ = syscall.Rmdir(filepath.Join(dir, d.Name()))
			}
		}
	}
	imgs, err := cli.ImageService().List(ctx)
	errs = append(errs, err)
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		errs = append(errs, cli.ImageService().Delete(ctx, img.Name, opts...))
	}
	ls, err := cli.LeasesService().List(ctx)
	errs = append(errs, err)
	if strict && len(ls) > 0 {
		errs = append(errs, fmt.Errorf("%d leases left", len(ls)))
	}
	for _, l := range ls {
		errs = append(errs, cli.LeasesService().Delete(ctx, l, leases.SynchronousDelete))
	}
	// The garbage collector removes the content and snapshots after the
	// last delete; the namespace can go once it is empty.
	var nerr error
	for i := 0; i < 200; i++ {
		if nerr = cli.NamespaceService().Delete(ctx, ns); nerr == nil || errdefs.IsNotFound(nerr) {
			nerr = nil
			break
		}
		if !strings.Contains(nerr.Error(), "must be empty") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	errs = append(errs, nerr)
	for _, dir := range cgroupNSDirs(ns) {
		if err := syscall.Rmdir(dir); err != nil && err != syscall.ENOENT {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}
