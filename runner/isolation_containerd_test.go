package runner

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	ctrd "github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
)

func isoContainerdClient(cfg *config.Config) (*ctrd.Client, context.Context, context.CancelFunc, error) {
	cli, err := ctrd.New(cfg.Containerd.ResolvedAddress())
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), cfg.Containerd.Namespace), 30*time.Second)
	return cli, ctx, func() { cancel(); cli.Close() }, nil
}

// isoContainerdContainers lists the ids of the runner's containers in the
// configured containerd namespace.
func isoContainerdContainers(cfg *config.Config, runnerID string) ([]string, error) {
	cli, ctx, done, err := isoContainerdClient(cfg)
	if err != nil {
		return nil, err
	}
	defer done()
	list, err := cli.Containers(ctx, fmt.Sprintf("labels.%q==%s", executors.LabelRunner, runnerID))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, c := range list {
		ids = append(ids, c.ID())
	}
	return ids, nil
}

// isoContainerdNetNS returns the network namespace inode of the task of
// job jobID.
func isoContainerdNetNS(t *testing.T, cfg *config.Config, runnerID, jobID string) uint64 {
	t.Helper()
	cli, ctx, done, err := isoContainerdClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	list, err := cli.Containers(ctx, fmt.Sprintf("labels.%q==%s,labels.%q==%s", executors.LabelRunner, runnerID, executors.LabelJob, jobID))
	if err != nil || len(list) != 1 {
		t.Fatalf("want one container of job %s: %d, %v", jobID, len(list), err)
	}
	task, err := list[0].Task(ctx, nil)
	if err != nil {
		t.Fatalf("task of job %s: %v", jobID, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", task.Pid()), &st); err != nil {
		t.Fatalf("stat of the network namespace of job %s: %v", jobID, err)
	}
	return st.Ino
}

// A job whose image is missing fails as an image pull failure and leaves
// nothing: with containerd its namespace was made and firewalled before
// the image was looked up, and goes with the job (isoOpen's cleanup
// checks netns files, veths, rules, pool entries and containers).
func TestMissingImageLeavesNoNetwork(t *testing.T) {
	isoEachExecutor(t, func(t *testing.T) {
		env := isoOpen(t)
		j := &job.Job{ID: "missing-image", Source: job.SourceLocal, Repo: isoRepo, Image: "airlock-missing:none", Timeout: time.Minute,
			Steps: []job.Step{{Name: "never", Script: []string{"echo ran"}, When: job.OnSuccess}}}
		res, err := env.r.Run(context.Background(), j, RunOptions{})
		if err != nil {
			t.Fatalf("Run teardown: %v", err)
		}
		if res.Reason != ImagePullFailure || !errors.Is(res.Err, executors.ErrImageNotFound) {
			t.Fatalf("Run = %s/%s (%v), want an image pull failure", res.State, res.Reason, res.Err)
		}
	})
}
