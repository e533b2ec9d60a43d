package main

// Helpers of the end-to-end tests (e2e_test.go): they build the real
// airlock binary once and drive it with os/exec as an admin and a user
// would, each test with its own state directory and configuration file.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/testenv"
)

// e2eBuild is the airlock binary built once per test run.
var e2eBuild struct {
	once sync.Once
	dir  string
	bin  string
	err  error

	imageOnce sync.Once
	image     string // the test image plus e2ehttp
	imageErr  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if e2eBuild.image != "" {
		if out, err := exec.Command("docker", "rmi", e2eBuild.image).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "removing image %s: %v\n%s", e2eBuild.image, err, out)
			code = 1
		}
	}
	if e2eBuild.dir != "" {
		os.RemoveAll(e2eBuild.dir)
	}
	os.Exit(code)
}

// e2eBinary builds ./cmd/airlock (this package) once and returns the path.
func e2eBinary(t *testing.T) string {
	t.Helper()
	e2eBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "airlock-e2e-bin-")
		if err != nil {
			e2eBuild.err = err
			return
		}
		e2eBuild.dir = dir
		goBin := "go" // go test puts its own GOROOT/bin first in PATH
		bin := filepath.Join(dir, "airlock")
		cmd := exec.Command(goBin, "build", "-o", bin, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			e2eBuild.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		// The step server beside it, as `make install` puts it: the
		// executors find it there.
		stepd, err := os.ReadFile(testenv.StepServer(t))
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "airlock-stepd"), stepd, 0o755)
		}
		if err != nil {
			e2eBuild.err = fmt.Errorf("placing airlock-stepd: %w", err)
			return
		}
		e2eBuild.bin = bin
	})
	if e2eBuild.err != nil {
		t.Fatalf("building airlock: %v", e2eBuild.err)
	}
	return e2eBuild.bin
}

// e2eHTTPClient is a static HTTP client for jobs that need to send a
// header over TLS: busybox wget's TLS lacks the signature_algorithms
// extension that Go's TLS (the gateway's) requires of TLS 1.2 clients.
// Usage: e2ehttp URL ['Name: value']... It honours the proxy variables and
// SSL_CERT_FILE, prints the status and exits 1 on a status >= 400.
const e2eHTTPClient = `package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	req, err := http.NewRequest(http.MethodGet, os.Args[1], nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, h := range os.Args[2:] {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	fmt.Printf("e2ehttp status=%d %s\n", resp.StatusCode, strings.TrimSpace(string(body)))
	if resp.StatusCode >= 400 {
		os.Exit(1)
	}
}
`

// e2eImage returns an image made of the test image plus /usr/local/bin/e2ehttp
// (built once per run, removed in TestMain).
func e2eImage(t *testing.T) string {
	t.Helper()
	base := testenv.RequireTestImage(t)
	e2eBuild.imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "airlock-e2e-http-")
		if err != nil {
			e2eBuild.imageErr = err
			return
		}
		defer os.RemoveAll(dir)
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(e2eHTTPClient), 0o644); err != nil {
			e2eBuild.imageErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module e2ehttp\n"), 0o644); err != nil {
			e2eBuild.imageErr = err
			return
		}
		goBin := "go" // go test puts its own GOROOT/bin first in PATH
		build := exec.Command(goBin, "build", "-trimpath", "-o", "e2ehttp", ".")
		build.Dir = dir
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local")
		if out, err := build.CombinedOutput(); err != nil {
			e2eBuild.imageErr = fmt.Errorf("building e2ehttp: %v\n%s", err, out)
			return
		}
		tag := fmt.Sprintf("airlock-e2e:http-%d", os.Getpid())
		name := fmt.Sprintf("airlock-e2e-build-%d", os.Getpid())
		steps := [][]string{
			{"create", "--name", name, base},
			{"cp", filepath.Join(dir, "e2ehttp"), name + ":/usr/local/bin/e2ehttp"},
			{"commit", name, tag},
		}
		defer exec.Command("docker", "rm", "-f", name).Run()
		for _, st := range steps {
			if out, err := exec.Command("docker", st...).CombinedOutput(); err != nil {
				e2eBuild.imageErr = fmt.Errorf("docker %s: %v\n%s", strings.Join(st, " "), err, out)
				return
			}
		}
		e2eBuild.image = tag
	})
	if e2eBuild.imageErr != nil {
		t.Fatalf("building the e2e image: %v", e2eBuild.imageErr)
	}
	return e2eBuild.image
}

// e2eOptions is what a test's configuration file says.
type e2eOptions struct {
	Hosts            map[string]string // [gateway] hosts
	UpstreamCA       string            // [gateway] upstream_ca_file
	Ceiling          []string          // [egress] ceiling
	AuditURL         string            // [audit] http_url
	AuditTokenSecret string            // [audit] http_token_secret
	Executor         string            // executor ("" = docker); containerd gets a namespace of the test's own
}

// e2eEnv is one test's airlock installation: state directory, runtime
// directory and configuration file. Every command's output is kept for
// the leak checks.
type e2eEnv struct {
	t       *testing.T
	bin     string
	dir     string
	state   string
	runtime string
	config  string
	ctrdNS  string // containerd namespace when the executor is containerd

	mu      sync.Mutex
	outputs []string // stdout and stderr of every command run
}

// e2eJob returns the path of a job file under testdata/jobs/e2e.
func e2eJob(name string) string { return filepath.Join("..", "..", "testdata", "jobs", "e2e", name) }

func newE2E(t *testing.T, o e2eOptions) *e2eEnv {
	t.Helper()
	bin := e2eBinary(t)
	dir := t.TempDir()
	e := &e2eEnv{t: t, bin: bin, dir: dir, state: filepath.Join(dir, "state"), runtime: filepath.Join(dir, "run"), config: filepath.Join(dir, "config.toml")}
	if err := os.MkdirAll(e.runtime, 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "runtime_dir = %q\n", e.runtime)
	if o.Executor == "containerd" {
		e.ctrdNS = testenv.ContainerdNamespace(t)
		fmt.Fprintf(&b, "executor = \"containerd\"\n\n[containerd]\naddress = %q\nnamespace = %q\npull_policy = \"never\"\nstop_grace = \"2s\"\n",
			testenv.ContainerdSocket(), e.ctrdNS)
	}
	b.WriteString("\n[docker]\npull_policy = \"never\"\nstop_grace = \"2s\"\n\n")
	// A pool of our own: other tests on the host may hold addresses of
	// the default pool under pool files of their own.
	fmt.Fprintf(&b, "[network]\npool = %q\npool_file = %q\n\n", e2ePool(), filepath.Join(dir, "netpool.json"))
	// hosts_only: the gateway must never ask a real resolver in a test.
	b.WriteString("[gateway]\nhosts_only = true\n")
	if o.UpstreamCA != "" {
		fmt.Fprintf(&b, "upstream_ca_file = %q\n", o.UpstreamCA)
	}
	if len(o.Hosts) > 0 {
		b.WriteString("[gateway.hosts]\n")
		for _, k := range slices.Sorted(maps.Keys(o.Hosts)) {
			fmt.Fprintf(&b, "%q = %q\n", k, o.Hosts[k])
		}
	}
	b.WriteString("\n[egress]\nceiling = [")
	for i, c := range o.Ceiling {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", c)
	}
	b.WriteString("]\n\n[audit]\n")
	if o.AuditURL != "" {
		fmt.Fprintf(&b, "http_url = %q\n", o.AuditURL)
	}
	if o.AuditTokenSecret != "" {
		fmt.Fprintf(&b, "http_token_secret = %q\n", o.AuditTokenSecret)
	}
	if err := os.WriteFile(e.config, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.checkNothingLeft)
	return e
}

// e2ePoolNext numbers the /24s that e2ePool hands out in this process,
// from a random one of 10.240.0.0/12: tests of one binary never share
// one, and test binaries running at once are unlikely to.
var e2ePoolNext = func() *atomic.Uint32 {
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	var n atomic.Uint32
	n.Store(uint32(b[0])<<8 | uint32(b[1]))
	return &n
}()

// e2ePool returns a /24 of 10.240.0.0/12 for a test's job networks.
func e2ePool() string {
	n := e2ePoolNext.Add(1) % 4096
	return fmt.Sprintf("10.%d.%d.0/24", 240+n/256, n%256)
}

// runnerID is the runner id of the state directory ("" before the first exec).
func (e *e2eEnv) runnerID() string {
	b, err := os.ReadFile(filepath.Join(e.state, "runner_id"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// containers lists the ids of containers labelled with the runner's id.
func (e *e2eEnv) containers() []string {
	id := e.runnerID()
	if id == "" {
		return nil
	}
	if e.ctrdNS != "" {
		out, err := exec.Command("ctr", "-a", testenv.ContainerdSocket(), "-n", e.ctrdNS, "containers", "ls", "-q",
			`labels."io.airlock.runner"==`+id).Output()
		if err != nil {
			e.t.Errorf("ctr containers ls: %v", err)
		}
		return strings.Fields(string(out))
	}
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=io.airlock.runner="+id).Output()
	if err != nil {
		e.t.Errorf("docker ps: %v", err)
		return nil
	}
	return strings.Fields(string(out))
}

// checkNothingLeft asserts that no container, job runtime directory or
// address pool entry of the runner is left.
func (e *e2eEnv) checkNothingLeft() {
	id := e.runnerID()
	l := testenv.Leftovers{RuntimeDir: e.runtime}
	if id != "" {
		l.RunnerID, l.PoolFile = id, filepath.Join(e.dir, "netpool.json")
	}
	if e.ctrdNS != "" {
		// testenv.ContainerdNamespace removes containerd's at cleanup.
		if ids := e.containers(); len(ids) > 0 {
			e.t.Errorf("containers of runner %s left after the test: %v", id, ids)
		}
	}
	l.Assert(e.t)
}

// e2eResult is a finished command.
type e2eResult struct {
	Stdout, Stderr string
	Code           int
}

func (r e2eResult) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.Code, r.Stdout, r.Stderr)
}

// Output is stdout and stderr together.
func (r e2eResult) Output() string { return r.Stdout + r.Stderr }

func (e *e2eEnv) command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--state-dir", e.state, "--config", e.config, "--log-level", "debug"}, args...)
	cmd := exec.CommandContext(ctx, e.bin, full...)
	cmd.Env = append(os.Environ(), "AIRLOCK_CONFIG=", "AIRLOCK_STATE_DIR=")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func (e *e2eEnv) keep(out ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.outputs = append(e.outputs, out...)
}

// run runs airlock with args (global flags added) and stdin, waiting at
// most 3 minutes.
func (e *e2eEnv) run(stdin string, args ...string) e2eResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.command(ctx, args...)
	var so, se bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &so, &se
	err := cmd.Run()
	res := e2eResult{Stdout: so.String(), Stderr: se.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	case err != nil:
		e.t.Fatalf("running airlock %s: %v", strings.Join(args, " "), err)
	}
	e.keep(res.Stdout, res.Stderr)
	return res
}

// mustRun is run that fails the test unless airlock exits 0.
func (e *e2eEnv) mustRun(stdin string, args ...string) e2eResult {
	e.t.Helper()
	res := e.run(stdin, args...)
	if res.Code != 0 {
		e.t.Fatalf("airlock %s: %s", strings.Join(args, " "), res)
	}
	return res
}

// e2eBuffer is a goroutine-safe buffer.
type e2eBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *e2eBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *e2eBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// e2eProc is an airlock command running in the background.
type e2eProc struct {
	e      *e2eEnv
	cmd    *exec.Cmd
	stdout e2eBuffer
	stderr e2eBuffer
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// start starts airlock with args in the background; the test's cleanup
// kills it if it still runs.
func (e *e2eEnv) start(args ...string) *e2eProc {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	p := &e2eProc{e: e, done: make(chan struct{}), cancel: cancel}
	p.cmd = e.command(ctx, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		cancel()
		e.t.Fatalf("starting airlock %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		// A test that failed midway leaves its process running: stopped
		// as an admin would, it cleans up, and what is left after that
		// (checkNothingLeft, registered before) is a leak of its own.
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(time.Minute):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		cancel()
	})
	return p
}

// exited reports whether the process has ended.
func (p *e2eProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitOutput waits until stdout or stderr contains s.
func (p *e2eProc) waitOutput(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.stdout.String()+p.stderr.String(), s) {
			return true
		}
		if p.exited() {
			return strings.Contains(p.stdout.String()+p.stderr.String(), s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// signal sends sig; a process that already ended is left to wait, which
// reports its output.
func (p *e2eProc) signal(sig syscall.Signal) {
	if p.exited() {
		return
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.e.t.Fatalf("sending %v to airlock: %v", sig, err)
	}
}

// wait waits for the process to end and returns its result.
func (p *e2eProc) wait(timeout time.Duration) e2eResult {
	p.e.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		p.e.t.Fatalf("airlock did not end within %s; output:\n%s%s", timeout, p.stdout.String(), p.stderr.String())
	}
	res := e2eResult{Stdout: p.stdout.String(), Stderr: p.stderr.String()}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		res.Code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Code = -int(ws.Signal())
		}
	} else if p.err != nil {
		p.e.t.Fatalf("waiting for airlock: %v", p.err)
	}
	p.e.keep(res.Stdout, res.Stderr)
	return res
}

// e2eSecret returns a fresh random value that names what it is for, so a
// grep for it is meaningful.
func e2eSecret(what string) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "e2e-" + what + "-" + hex.EncodeToString(b)
}

// e2eHash is the first 16 hex digits of the SHA-256 of v: what jobs print
// instead of a credential (sha256sum | cut -c1-16).
func e2eHash(v string) string {
	s := sha256.Sum256([]byte(v))
	return hex.EncodeToString(s[:])[:16]
}

var e2eJobIDRE = regexp.MustCompile(`Running job (\S+) on runner`)

// e2eJobID is the job id `airlock exec` announced.
func e2eJobID(t *testing.T, out string) string {
	t.Helper()
	m := e2eJobIDRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no job id in airlock exec output:\n%s", out)
	}
	return m[1]
}

// trail is the path of a job's trail in the directory sink.
func (e *e2eEnv) trail(jobID string) string {
	return filepath.Join(e.state, "audit", jobID+audit.SpoolExt)
}

// records reads a trail file.
func (e *e2eEnv) records(path string) []audit.Record {
	e.t.Helper()
	recs, err := readTrailFile(path)
	if err != nil {
		e.t.Fatalf("reading trail %s: %v", path, err)
	}
	return recs
}

// e2eTypes lists the record types of a trail in order.
func e2eTypes(recs []audit.Record) []audit.EventType {
	var out []audit.EventType
	for _, r := range recs {
		out = append(out, r.Type)
	}
	return out
}

// e2eFind returns the first record of type typ for which match (may be
// nil) holds.
func e2eFind(recs []audit.Record, typ audit.EventType, match func(audit.Record) bool) (audit.Record, bool) {
	for _, r := range recs {
		if r.Type == typ && (match == nil || match(r)) {
			return r, true
		}
	}
	return audit.Record{}, false
}

// assertNoLeak greps every command output so far, every file under the
// state and runtime directories and the extra texts for each value.
func (e *e2eEnv) assertNoLeak(values []string, extra map[string]string) {
	e.t.Helper()
	e.mu.Lock()
	outs := slices.Clone(e.outputs)
	e.mu.Unlock()
	texts := map[string][]byte{}
	for i, o := range outs {
		texts[fmt.Sprintf("output of command %d", i)] = []byte(o)
	}
	for k, v := range extra {
		texts[k] = []byte(v)
	}
	for _, root := range []string{e.state, e.runtime} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			texts[path] = b
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			e.t.Errorf("walking %s: %v", root, err)
		}
	}
	for _, v := range values {
		for where, b := range texts {
			if bytes.Contains(b, []byte(v)) {
				e.t.Errorf("secret value %q… found in %s", v[:12], where)
			}
		}
	}
}

// e2eCollector is an audit HTTP collector on loopback.
type e2eCollector struct {
	srv    *httptest.Server
	status atomic.Int32 // answer; 0 = 200

	mu       sync.Mutex
	accepted []audit.Record // records of accepted posts
	auth     []string       // Authorization headers of every post
	refused  int
}

func newE2ECollector(t *testing.T) *e2eCollector {
	c := &e2eCollector{}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *e2eCollector) URL() string { return c.srv.URL + "/audit/ingest" }

func (c *e2eCollector) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.auth = append(c.auth, r.Header.Get("Authorization"))
	if code := int(c.status.Load()); code != 0 && code != http.StatusOK {
		c.refused++
		w.WriteHeader(code)
		return
	}
	recs, err := audit.ReadRecords(bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.accepted = append(c.accepted, recs...)
	w.WriteHeader(http.StatusOK)
}

// records returns the accepted records of job (all jobs if "").
func (c *e2eCollector) records(job string) []audit.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []audit.Record
	for _, r := range c.accepted {
		if job == "" || r.Job == job {
			out = append(out, r)
		}
	}
	return out
}

func (c *e2eCollector) authHeaders() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.auth)
}

func (c *e2eCollector) refusedPosts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refused
}

// e2eDockerInspect returns `docker inspect` of the runner's containers.
func (e *e2eEnv) dockerInspect() string {
	var b strings.Builder
	for _, id := range e.containers() {
		cmd := exec.Command("docker", "inspect", id)
		if e.ctrdNS != "" {
			// What an operator sees of a containerd job: its record and spec.
			cmd = exec.Command("ctr", "-a", testenv.ContainerdSocket(), "-n", e.ctrdNS, "containers", "info", id)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			e.t.Errorf("docker inspect %s: %v", id, err)
		}
		b.Write(out)
	}
	return b.String()
}

// e2eJSON pretty-prints v for failure messages.
func e2eJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}
