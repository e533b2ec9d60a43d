package netpolicy

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/airlock-ci/airlock/internal/nsenter"
)

// restoreRules feeds rules to iptables-restore (or ip6tables-restore) in the
// calling thread's network namespace. With noflush, only the chains the
// rules declare are rewritten.
func (t tools) restoreRules(ctx context.Context, rules string, noflush bool) error {
	var args []string
	if noflush {
		args = append(args, "--noflush")
	}
	if t.wait {
		args = append(args, "--wait")
	}
	cmd := exec.CommandContext(ctx, t.restore, args...)
	cmd.Stdin = strings.NewReader(rules)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running %s: %w: %s", t.restore, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// restoreHost applies a host-side filter script ("*filter\n...COMMIT\n")
// with iptables-restore --noflush. Concurrent calls are group-committed:
// while one restore runs, later scripts queue and then go in one restore
// (one nf_tables transaction). Parallel restores would otherwise make each
// other retry, as the ruleset generation changes under them. If a combined
// restore fails, its scripts are retried one by one so that one job's
// failure is reported to that job only.
func (t tools) restoreHost(ctx context.Context, script string) error {
	body, ok := strings.CutPrefix(script, "*filter\n")
	if ok {
		body, ok = strings.CutSuffix(body, "COMMIT\n")
	}
	if !ok {
		return fmt.Errorf("host rules are not a single filter table script: %q", script)
	}
	return t.host.submit(ctx, body, func(ctx context.Context, body string) error {
		return t.restoreRules(ctx, "*filter\n"+body+"COMMIT\n", true)
	})
}

// groupCommit batches work submitted while a previous batch runs.
type groupCommit struct {
	mu      sync.Mutex
	pending []*commitReq
	running bool
}

type commitReq struct {
	ctx  context.Context
	body string
	done chan error
}

// submit queues body and waits for it to be applied by run, either in a
// batch led by another caller or, when none runs, by this caller.
func (g *groupCommit) submit(ctx context.Context, body string, run func(context.Context, string) error) error {
	req := &commitReq{ctx: ctx, body: body, done: make(chan error, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, req)
	if g.running {
		g.mu.Unlock()
		return <-req.done
	}
	g.running = true
	for len(g.pending) > 0 {
		batch := g.pending
		g.pending = nil
		g.mu.Unlock()
		g.runBatch(batch, run)
		g.mu.Lock()
	}
	g.running = false
	g.mu.Unlock()
	return <-req.done
}

func (g *groupCommit) runBatch(batch []*commitReq, run func(context.Context, string) error) {
	var live []*commitReq
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	if len(live) > 1 {
		var combined strings.Builder
		for _, r := range live {
			combined.WriteString(r.body)
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(live[0].ctx), time.Minute)
		err := run(ctx, combined.String())
		cancel()
		if err == nil {
			for _, r := range live {
				r.done <- nil
			}
			return
		}
	}
	for _, r := range live {
		r.done <- run(r.ctx, r.body)
	}
}

// saveFilter returns the filter table as iptables-save prints it.
func (t tools) saveFilter(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, t.save, "-t", "filter")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("running %s: %w: %s", t.save, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// inNetNS runs fn on a locked OS thread in the network namespace at path
// (never the caller's own: a full restore there would wipe the host's,
// Docker's, rules).
func inNetNS(path string, fn func() error) error { return nsenter.RunPath(path, true, fn) }
