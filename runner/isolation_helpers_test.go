package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors"
	"github.com/airlock-ci/airlock/executors/containerd"
	"github.com/airlock-ci/airlock/internal/testenv"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/sandbox"
)

// isoWildName is the one name below *.wild.test the tests use. The
// gateway's hosts map has no wildcards and falls back to the system
// resolver, so every name a job may reach is listed in it explicitly: no
// test ever makes the gateway resolve a name outside the fake internet.
const isoWildName = "build.wild.test"

// isoRepo is the repository of the tests' jobs.
const isoRepo = "isolation/probe"

// isoCAVar is the file variable holding the fake internet's CA.
const isoCAVar = "FAKE_CA"

// isoEnv is a runner built by Open, as the service builds it, in front of
// the fake internet.
type isoEnv struct {
	r        *Runner
	fake     *testenv.FakeInternet
	cfg      *config.Config
	runnerID string
	caPEM    string
}

// isoOpen builds the fake internet and a runner with Open whose gateway
// resolves the fake internet's names and whose default egress ceiling is
// ceiling. At cleanup it closes the runner and asserts that nothing
// carrying the runner's id is left on the host.
func isoOpen(t *testing.T, ceiling ...string) *isoEnv {
	t.Helper()
	return isoOpenWith(t, nil, ceiling...)
}

// isoOpenWith is isoOpen with the configuration changed by mod first.
func isoOpenWith(t *testing.T, mod func(*config.Config), ceiling ...string) *isoEnv {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTestImage(t)
	fake := testenv.NewFakeInternet(t)
	cfg := isoConfig(t, fake, ceiling...)
	if mod != nil {
		mod(cfg)
	}
	ctx := context.Background()
	r, err := openWired(ctx, cfg, isoLogger())
	if err != nil {
		t.Fatalf("Open() error = %v", err)
	}
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, "runner_id"))
	if err != nil {
		t.Fatalf("reading runner id: %v", err)
	}
	id := strings.TrimSpace(string(b))
	// Cleanups run last-in first-out: the runner closes before the check.
	t.Cleanup(func() { isoAssertNothingLeft(t, id, cfg) })
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close() error = %v", err)
		}
	})
	if _, err := r.Recover(ctx); err != nil {
		t.Fatalf("Recover() error = %v", err)
	}
	return &isoEnv{r: r, fake: fake, cfg: cfg, runnerID: id, caPEM: string(fake.CA.PEM)}
}

// isoEachExecutor runs fn as a subtest per executor: "docker" and
// "containerd" (isoOpen builds the runner with the one the subtest names).
func isoEachExecutor(t *testing.T, fn func(t *testing.T)) {
	for _, name := range []string{config.ExecutorDocker, config.ExecutorContainerd} {
		t.Run(name, fn)
	}
}

// isoExecutor is the executor a test runs with: the one a subtest of
// isoEachExecutor names, else Docker.
func isoExecutor(t testing.TB) string {
	for _, part := range strings.Split(t.Name(), "/") {
		if part == config.ExecutorContainerd {
			return config.ExecutorContainerd
		}
	}
	return config.ExecutorDocker
}

// isoConfig is the configuration of the isolation tests' runner, saved to
// a config.toml of its own (cfg.Path()).
func isoConfig(t *testing.T, fake *testenv.FakeInternet, ceiling ...string) *config.Config {
	t.Helper()
	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.RuntimeDir = t.TempDir()
	cfg.Docker.Pull = string(executors.PullNever)
	cfg.Docker.Grace = time.Second
	cfg.Docker.StepServer = testenv.StepServer(t)
	if isoExecutor(t) == config.ExecutorContainerd {
		cfg.Executor = config.ExecutorContainerd
		cfg.Containerd = containerd.Config{
			Address:    testenv.ContainerdSocket(),
			Namespace:  testenv.ContainerdNamespace(t),
			Pull:       string(executors.PullNever),
			Grace:      time.Second,
			StepServer: testenv.StepServer(t),
		}
	}
	cfg.Gateway.Hosts = isoHosts()
	cfg.Gateway.HostsOnly = true // never a real DNS query from a test
	cfg.Gateway.UpstreamCAFile = fake.CA.WriteFile(t)
	cfg.Egress.Ceiling = ceiling
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("test configuration is invalid: %v", errors.Join(errs...))
	}
	// Saved like an installed runner's, so that messages can name the file.
	if err := cfg.Save(filepath.Join(t.TempDir(), "config.toml")); err != nil {
		t.Fatalf("saving the configuration: %v", err)
	}
	return cfg
}

// isoHosts is the gateway's hosts map: the fake internet's names, with the
// wildcard replaced by isoWildName.
func isoHosts() map[string]string {
	hosts := map[string]string{isoWildName: testenv.WildAddr.String()}
	for name, addr := range testenv.FakeHosts {
		if strings.HasPrefix(name, "*.") {
			continue
		}
		hosts[name] = addr.String()
	}
	return hosts
}

// isoLogger logs to stderr at the level AIRLOCK_TEST_LOG names, and
// nothing by default.
func isoLogger() hclog.Logger {
	lvl := os.Getenv("AIRLOCK_TEST_LOG")
	if lvl == "" {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Level: hclog.LevelFromString(lvl), Output: os.Stderr})
}

// isoProbe is one command a job runs; its last output line is recorded
// under its name. A probe without a name is a plain script line.
type isoProbe struct {
	name string
	cmd  string
}

// isoNoProxy runs a command without the proxy variables: the job's only
// way out is then DNS answering the gateway and the DNAT of tcp/80 and
// tcp/443 to the transparent listeners.
const isoNoProxy = "env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy "

// isoScript turns probes into script lines. The first line records the
// job's gateway and own address as the probe "addr" ("GATEWAY JOBIP");
// $G and $J hold them for later probes. A probe's output line is
// "@@ NAME <last line of its output>"; a failing probe does not stop the
// script.
func isoScript(probes []isoProbe) []string {
	lines := []string{
		`G=$(sed -n 's/^nameserver //p' /etc/resolv.conf); J=$(ip -o -4 addr show eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p'); echo "@@ addr $G $J"`,
	}
	for _, p := range probes {
		if p.name == "" {
			lines = append(lines, p.cmd)
			continue
		}
		lines = append(lines, fmt.Sprintf(`echo "@@ %s $( (%s) 2>&1 | tail -n 1)"`, p.name, p.cmd))
	}
	return lines
}

// isoJob returns a job running probes in the test image.
func isoJob(id string, egress []string, probes []isoProbe) *job.Job {
	script := isoScript(probes)
	return &job.Job{
		ID:      id,
		Source:  job.SourceLocal,
		Repo:    isoRepo,
		Image:   testenv.TestImage,
		Egress:  egress,
		Timeout: 3 * time.Minute,
		Steps:   []job.Step{{Name: "probe", Script: script, When: job.OnSuccess}},
	}
}

// withCA adds the fake internet's CA as a file variable.
func (e *isoEnv) withCA(j *job.Job) *job.Job {
	j.Variables = append(j.Variables, job.Variable{Key: isoCAVar, Value: e.caPEM, File: true})
	return j
}

// isoRun is one finished job with its output parsed.
type isoRun struct {
	res    *Result
	out    string
	probes map[string]string
	// gateway and job are the job's addresses (the "addr" probe).
	gateway, jobIP netip.Addr
	records        []audit.Record
}

// run runs j to the end and parses its probe lines and audit trail.
func (e *isoEnv) run(t *testing.T, j *job.Job, out *isoOutput) *isoRun {
	t.Helper()
	if out == nil {
		out = &isoOutput{}
	}
	res, err := e.r.Run(context.Background(), j, RunOptions{Out: out, AwaitAudit: true})
	if err != nil {
		t.Errorf("Run(%s) teardown error = %v", j.ID, err)
	}
	return isoParse(t, res, out.String())
}

func isoParse(t *testing.T, res *Result, out string) *isoRun {
	t.Helper()
	run := &isoRun{res: res, out: out, probes: map[string]string{}}
	for line := range strings.Lines(out) {
		rest, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "@@ ")
		if !ok {
			continue
		}
		name, val, _ := strings.Cut(rest, " ")
		run.probes[name] = val
	}
	if a, ok := run.probes["addr"]; ok {
		g, jip, _ := strings.Cut(a, " ")
		run.gateway, _ = netip.ParseAddr(g)
		run.jobIP, _ = netip.ParseAddr(jip)
	}
	if res.AuditTrail != "" {
		f, err := os.Open(res.AuditTrail)
		if err != nil {
			t.Fatalf("opening audit trail: %v", err)
		}
		defer f.Close()
		if run.records, err = audit.ReadRecords(f); err != nil {
			t.Fatalf("ReadRecords(%s) error = %v", res.AuditTrail, err)
		}
	}
	return run
}

// probe returns a probe's recorded line, failing the test if it is missing.
func (r *isoRun) probe(t *testing.T, name string) string {
	t.Helper()
	v, ok := r.probes[name]
	if !ok {
		t.Fatalf("probe %q printed nothing; job output:\n%s", name, r.out)
	}
	return v
}

// denied reports whether the gateway's summary counts a denial of dest
// ("host:port", "host" for DNS, an address for refused sources).
func (r *isoRun) denied(dest string) bool {
	return r.res.Egress != nil && r.res.Egress.DeniedDestinations[dest] > 0
}

// auditDenied returns the audit trail's denial records (egress_denied,
// dns_refused) for host.
func (r *isoRun) auditDenied(host string) []audit.Record {
	var out []audit.Record
	for _, rec := range r.records {
		if (rec.Type == audit.EgressDenied || rec.Type == audit.DNSRefused) && rec.String(audit.FieldHost) == host {
			out = append(out, rec)
		}
	}
	return out
}

// isoOutput collects a job's output and tells waiters when a line appears.
type isoOutput struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{}
}

func (o *isoOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Write(p)
	if o.changed != nil {
		close(o.changed)
		o.changed = nil
	}
	return len(p), nil
}

func (o *isoOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// await waits until the output has a line starting with prefix and
// returns the rest of that line.
func (o *isoOutput) await(ctx context.Context, prefix string) (string, error) {
	for {
		o.mu.Lock()
		for line := range strings.Lines(o.b.String()) {
			if rest, ok := strings.CutPrefix(line, prefix); ok && strings.HasSuffix(line, "\n") {
				o.mu.Unlock()
				return strings.TrimSpace(rest), nil
			}
		}
		if o.changed == nil {
			o.changed = make(chan struct{})
		}
		ch := o.changed
		o.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q in the job's output: %w\noutput so far:\n%s", prefix, ctx.Err(), o.String())
		}
	}
}

// isoLeftovers lists what carries the runner's id or tag on the host:
// links (name or alias), iptables and ip6tables lines, nf_tables lines,
// containers, address pool entries and runtime directories.
func isoLeftovers(t testing.TB, runnerID string, cfg *config.Config) []string {
	t.Helper()
	tag := netpolicy.RunnerTag(runnerID)
	poolFile := cfg.Network.PoolFile
	if poolFile == "" {
		poolFile = sandbox.DefaultPoolFile
	}
	out := testenv.Leftovers{
		RunnerID:   runnerID,
		Marks:      []string{netpolicy.HostIfPrefix + tag, netpolicy.ChainPrefix + tag, "runner=" + runnerID + " "},
		RuntimeDir: cfg.RuntimeDir,
		PoolFile:   poolFile,
	}.List(t)
	if cfg.ExecutorName() == config.ExecutorContainerd {
		ids, err := isoContainerdContainers(cfg, runnerID)
		if err != nil {
			t.Errorf("listing containers: %v", err)
		}
		for _, id := range ids {
			out = append(out, "container "+id)
		}
	}
	if ents, err := os.ReadDir(sandbox.NetNSDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "airlock-"+tag+"-") {
				out = append(out, "network namespace "+e.Name())
			}
		}
	}
	return out
}

func isoAssertNothingLeft(t testing.TB, runnerID string, cfg *config.Config) {
	t.Helper()
	if left := isoLeftovers(t, runnerID, cfg); len(left) > 0 {
		t.Errorf("resources of runner %s left on the host:\n%s", runnerID, strings.Join(left, "\n"))
	}
}

// isoContainerNetNS returns the network namespace (its nsfs inode) of the
// running container of job jobID.
func isoContainerNetNS(t *testing.T, cfg *config.Config, runnerID, jobID string) uint64 {
	t.Helper()
	if cfg.ExecutorName() == config.ExecutorContainerd {
		return isoContainerdNetNS(t, cfg, runnerID, jobID)
	}
	b, err := exec.Command("docker", "ps", "-q", "--filter", "label="+executors.LabelRunner+"="+runnerID,
		"--filter", "label="+executors.LabelJob+"="+jobID).Output()
	if err != nil {
		t.Fatalf("listing the container of job %s: %v", jobID, err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" || strings.Contains(id, "\n") {
		t.Fatalf("want one running container of job %s, docker ps says %q", jobID, id)
	}
	// The engine makes no namespace of its own (no network): the one runc
	// made is the container's init's.
	b, err = exec.Command("docker", "inspect", "-f", "{{.State.Pid}}", id).Output()
	if err != nil {
		t.Fatalf("inspecting container %s: %v", id, err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strings.TrimSpace(string(b))+"/ns/net", &st); err != nil {
		t.Fatalf("stat of the network namespace of job %s: %v", jobID, err)
	}
	return st.Ino
}

// isoNetNSHolders lists what still holds the network namespace with inode
// ino: processes in it and nsfs mounts of it (in the test's and in PID 1's
// mount namespace). Docker unmounts a removed container's namespace at
// once but deletes the empty mount point only later, so the path itself
// says nothing.
func isoNetNSHolders(t *testing.T, runnerID string, ino uint64) []string {
	t.Helper()
	want := fmt.Sprintf("net:[%d]", ino)
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		if l, err := os.Readlink(p); err == nil && l == want {
			out = append(out, "process "+strings.Split(p, "/")[2])
		}
	}
	for _, mi := range []string{"/proc/self/mountinfo", "/proc/1/mountinfo"} {
		b, err := os.ReadFile(mi)
		if err != nil {
			t.Errorf("reading %s: %v", mi, err)
			continue
		}
		for line := range strings.Lines(string(b)) {
			if !strings.Contains(line, want) {
				continue
			}
			// Namespace inodes are reused: a name under /run/netns that is
			// not this runner's is another test process's new namespace.
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], "/run/netns/") &&
				!strings.HasPrefix(f[4], "/run/netns/airlock-"+netpolicy.RunnerTag(runnerID)+"-") {
				continue
			}
			out = append(out, mi+": "+strings.TrimSpace(line))
		}
	}
	return out
}

// isoHostAddrs returns the host's IPv4 addresses outside the job address
// pool (other jobs' gateways are not the host's services).
func isoHostAddrs(t *testing.T, pool netip.Prefix) []netip.Addr {
	t.Helper()
	b, err := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	if err != nil {
		t.Fatalf("listing host addresses: %v", err)
	}
	var out []netip.Addr
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "inet" {
				continue
			}
			p, err := netip.ParsePrefix(f[i+1])
			if err == nil && !pool.Contains(p.Addr()) {
				out = append(out, p.Addr())
			}
		}
	}
	return out
}

// isoStartPool starts a pool of one warm sandbox of the test image, waits
// until it is ready, and checks that before any job claims it the sandbox
// reaches nothing: not the fake internet, not its gateway's ports (no
// policy is registered for it yet).
func isoStartPool(t *testing.T, env *isoEnv) *Pool {
	t.Helper()
	return isoStartPoolWith(t, env, PoolConfig{Sizes: map[string]int{testenv.TestImage: 1}}, testenv.TestImage)
}

// isoPool starts the pool cfg on the runner, closed at cleanup.
func isoPool(t *testing.T, env *isoEnv, cfg PoolConfig) *Pool {
	t.Helper()
	p, err := env.r.StartPool(context.Background(), cfg)
	if err != nil {
		t.Fatalf("StartPool() error = %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Errorf("Pool.Close() error = %v", err)
		}
	})
	return p
}

// isoWaitReady waits a minute at most for the pool to have every sandbox.
func isoWaitReady(t *testing.T, p *Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// isoStartPoolWith is isoStartPool for the pool cfg, probing the first
// ready sandbox of key (an image, or poolNetworks).
func isoStartPoolWith(t *testing.T, env *isoEnv, cfg PoolConfig, key string) *Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := isoPool(t, env, cfg)
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	w := p.ready[key][0]
	p.mu.Unlock()
	netns := w.netns
	switch {
	case w.ctr != nil:
		netns = w.ctr.NetNS()
	case w.holder != nil:
		netns = w.holder.NetNS()
	}
	probe := testenv.BuildProbe(t)
	for _, target := range []string{
		netip.AddrPortFrom(w.sb.GatewayIP, netpolicy.ProxyPort).String(),
		netip.AddrPortFrom(w.sb.GatewayIP, netpolicy.DNSPort).String(),
		netip.AddrPortFrom(testenv.AllowedAddr, testenv.FakeEchoPort).String(),
		netip.AddrPortFrom(testenv.MetadataAddr, 80).String(),
	} {
		if res := testenv.RunProbe(ctx, t, netns, probe, nil, "tcp", target); res.OK {
			t.Errorf("an unclaimed warm sandbox reached %s: %s", target, res.Line)
		}
	}
	return p
}
