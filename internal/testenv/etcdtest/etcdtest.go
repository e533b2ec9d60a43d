// Package etcdtest starts a real etcd cluster for a test: N member
// processes of the etcd server (Debian's etcd-server) on loopback ports,
// each with its own data directory under t.TempDir(), stopped when the
// test ends. Members can be stopped and started again to test member
// loss, a whole-cluster outage and watch resumption.
package etcdtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv"
)

// Cluster is a running test cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	members []*member
	token   string
}

type member struct {
	name, dir          string
	clientURL, peerURL string
	initial            string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts an n-member cluster and waits until every member is
// healthy. It skips (or fails) the test where etcd is missing.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := testenv.RequireEtcd(t)
	c := &Cluster{t: t, bin: bin, token: fmt.Sprintf("airlock-test-%d", time.Now().UnixNano())}
	root := t.TempDir()
	var initial []string
	for i := range n {
		m := &member{name: fmt.Sprintf("m%d", i), dir: filepath.Join(root, fmt.Sprintf("m%d", i)),
			clientURL: "http://" + freePort(t), peerURL: "http://" + freePort(t)}
		initial = append(initial, m.name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.initial = strings.Join(initial, ",")
	}
	t.Cleanup(c.stopAll)
	for i := range c.members {
		c.startMember(i)
	}
	for i := range c.members {
		c.WaitHealthy(i)
	}
	return c
}

var (
	portsMu    sync.Mutex
	portsGiven = map[string]bool{}
)

// freePort finds a loopback port that is free now, below the kernel's
// ephemeral range (32768 and up by default): a port from ":0" is one an
// outgoing connection of any test may take before etcd binds it, or
// while a stopped member waits to start again on it.
func freePort(t testing.TB) string {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		if portsGiven[addr] {
			continue // a stopped member of this process may want it back
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		portsGiven[addr] = true
		return addr
	}
	t.Fatal("finding a free loopback port in 20000-31999: 100 tries, none free")
	return ""
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.clientURL
	}
	return out
}

func (c *Cluster) startMember(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return
	}
	logf, err := os.OpenFile(m.dir+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin,
		"--name", m.name, "--data-dir", m.dir,
		"--listen-client-urls", m.clientURL, "--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", m.initial, "--initial-cluster-token", c.token, "--initial-cluster-state", "new",
		"--heartbeat-interval", "50", "--election-timeout", "500",
		"--logger", "zap", "--log-level", "warn", "--enable-v2=false")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		c.t.Fatalf("starting etcd member %s: %v", m.name, err)
	}
	m.cmd, m.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		_ = logf.Close()
		close(done)
	}(m.done)
}

// StartMember starts member i again (same data directory) and waits
// until it is healthy.
func (c *Cluster) StartMember(i int) {
	c.t.Helper()
	c.startMember(i)
	c.WaitHealthy(i)
}

// StopMember stops member i (SIGTERM, then SIGKILL) and waits for it.
func (c *Cluster) StopMember(i int) {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
	m.cmd = nil
}

// Stop stops every member.
func (c *Cluster) Stop() { c.stopAll() }

// StartAll starts every stopped member and waits until all are healthy.
func (c *Cluster) StartAll() {
	c.t.Helper()
	for i := range c.members {
		c.startMember(i)
	}
	for i := range c.members {
		c.WaitHealthy(i)
	}
}

func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for i := range c.members {
		wg.Add(1)
		go func() { defer wg.Done(); c.StopMember(i) }()
	}
	wg.Wait()
}

// WaitHealthy waits up to 30s for member i's /health to say true.
func (c *Cluster) WaitHealthy(i int) {
	c.t.Helper()
	m := c.members[i]
	client := &http.Client{Timeout: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last string
	for ctx.Err() == nil {
		resp, err := client.Get(m.clientURL + "/health")
		if err == nil {
			var b [256]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			last = string(b[:n])
			if resp.StatusCode == http.StatusOK && strings.Contains(last, `"health":"true"`) {
				return
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	log, _ := os.ReadFile(m.dir + ".log")
	c.t.Fatalf("etcd member %s did not become healthy: %s\n%s", m.name, last, log)
}

// DataDir is member i's data directory.
func (c *Cluster) DataDir(i int) string { return c.members[i].dir }
