package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadExample(t *testing.T) {
	c, err := Load("../../testdata/config.example.toml", false)
	if err != nil {
		t.Fatalf("Load(example): %v", err)
	}
	if c.Concurrent != 1 || c.CheckInterval != 3*time.Second || c.StateDir != DefaultStateDir {
		t.Errorf("defaults not kept: %+v", c)
	}
}

func TestLoadMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	if _, err := Load(missing, true); err != nil {
		t.Errorf("Load(missing, optional) = %v, want defaults", err)
	}
	if _, err := Load(missing, false); err == nil || !strings.Contains(err.Error(), "nope.toml") {
		t.Errorf("Load(missing, required) = %v, want an error naming the file", err)
	}
}

func TestLoadValues(t *testing.T) {
	p := write(t, `
concurrent = 4
check_interval = "10s"
shutdown_timeout = "5m"
log_format = "json"
[docker]
pull_policy = "never"
memory = "512m"
[network]
pool = "10.99.0.0/16"
[gateway.hosts]
"db.internal" = "10.1.2.3"
[egress]
ceiling = ["*.example.test:443", "10.1.2.0/24:5432"]
`)
	c, err := Load(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrent != 4 || c.CheckInterval != 10*time.Second || c.ShutdownTimeout != 5*time.Minute || c.LogFormat != "json" {
		t.Errorf("agent settings = %+v", c)
	}
	if c.Docker.Pull != "never" || c.Docker.Memory != "512m" {
		t.Errorf("docker = %+v", c.Docker)
	}
	if pf, _ := c.Network.Prefix(); pf.String() != "10.99.0.0/16" {
		t.Errorf("pool = %v", pf)
	}
	if e, err := c.Egress.Entries(); err != nil || len(e) != 2 {
		t.Errorf("egress entries = %v, %v", e, err)
	}
}

// Every problem is reported at once, each with its key (and the file).
func TestLoadErrors(t *testing.T) {
	p := write(t, `
concurrent = 0
check_interval = "-1s"
log_format = "xml"
bogus = 1
[docker]
pull_policy = "sometimes"
allowed_pull_policies = ["always", "often"]
allowed_images = ["ruby:*", "[unclosed"]
memory = "lots"
[network]
pool = "not-a-prefix"
firewall = "pf"
[pool]
size = -1
images = [""]
recent = 99
networks = -2
[gateway.hosts]
"db.internal" = "not-an-ip"
[egress]
ceiling = ["", "http://x"]
`)
	_, err := Load(p, false)
	if err == nil {
		t.Fatal("Load accepted a bad configuration")
	}
	for _, want := range []string{"config.toml", "concurrent", "check_interval", "log_format", `unknown key "bogus"`,
		"docker.pull_policy", `docker.allowed_pull_policies[1]: pull policy "often"`, `docker.allowed_images[1] "[unclosed": not a valid pattern`, "docker.memory", "network.pool", "network.firewall", "pool.size", "pool.images[0]", "pool.recent", "pool.networks", "gateway.hosts", "egress.ceiling"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestLoadSyntaxError(t *testing.T) {
	p := write(t, "concurrent = \n")
	_, err := Load(p, false)
	if err == nil || !strings.Contains(err.Error(), "config.toml:1") {
		t.Errorf("Load = %v, want an error with file and line", err)
	}
}

func TestSaveRoundTrip(t *testing.T) {
	c := Defaults()
	c.Concurrent = 3
	c.Egress.Ceiling = []string{"api.example.test:443"}
	p := filepath.Join(t.TempDir(), "sub", "config.toml")
	if err := c.Save(p); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode = %v, want 0600 (it holds runner tokens)", fi.Mode().Perm())
	}
	got, err := Load(p, false)
	if err != nil {
		t.Fatalf("Load(saved): %v", err)
	}
	if got.Concurrent != 3 || len(got.Egress.Ceiling) != 1 || got.CheckInterval != c.CheckInterval {
		t.Errorf("round trip = %+v", got)
	}
}

func TestExecutorKey(t *testing.T) {
	tests := []struct {
		value, want, wantErr string
	}{
		{`"docker"`, ExecutorDocker, ""},
		{`"containerd"`, ExecutorContainerd, ""},
		{`"podman"`, "", `executor "podman": must be docker or containerd`},
	}
	for _, tc := range tests {
		c, err := Load(write(t, "executor = "+tc.value+"\n"), false)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("executor = %s: %v", tc.value, err)
		case tc.wantErr == "" && c.ExecutorName() != tc.want:
			t.Errorf("executor = %s: ExecutorName() = %q, want %q", tc.value, c.ExecutorName(), tc.want)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("executor = %s: error %v, want one containing %q", tc.value, err, tc.wantErr)
		}
	}
	if c, err := Load(write(t, ""), false); err != nil || c.ExecutorName() != ExecutorDocker {
		t.Errorf("default executor = %q, %v; want docker", c.ExecutorName(), err)
	}
}

func TestDockerReadOnlyKeys(t *testing.T) {
	c, err := Load(write(t, "[docker]\nread_only = true\nwork_dir_size = \"2g\"\ntmp_size = \"512m\"\n"), false)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Docker.Limits(); !l.ReadOnly || l.WorkDirSize != 2<<30 || l.TmpSize != 512<<20 {
		t.Errorf("docker limits = %+v", l)
	}
	if c, err := Load(write(t, ""), false); err != nil || c.Docker.Limits().ReadOnly {
		t.Errorf("default read_only = %v, %v; want false", c.Docker.Limits().ReadOnly, err)
	}
}

func TestShmSizeKeys(t *testing.T) {
	c, err := Load(write(t, "[docker]\nshm_size = \"256m\"\n[containerd]\nshm_size = \"1g\"\n"), false)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c.Docker.ShmBytes(); err != nil || n != 256<<20 || c.Containerd.ShmSize != "1g" {
		t.Errorf("docker shm %d %v, containerd %q", n, err, c.Containerd.ShmSize)
	}
	if _, err := Load(write(t, "[docker]\nmemory = \"1g\"\nshm_size = \"2g\"\n"), false); err == nil || !strings.Contains(err.Error(), "docker.shm_size 2g: more than") {
		t.Errorf("shm_size over memory: %v", err)
	}
}

func TestServiceLimitKeys(t *testing.T) {
	c, err := Load(write(t, "[docker]\nservice_memory = \"512m\"\nservice_cpus = 0.5\nservice_pids_limit = 100\n[containerd]\nservice_memory = \"1g\"\n"), false)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Docker.ServiceLimits.Limits(); l.Memory != 512<<20 || l.CPUs != 0.5 || l.Pids != 100 {
		t.Errorf("docker service limits = %+v", l)
	}
	if l := c.Containerd.ServiceLimits.Limits(); l.Memory != 1<<30 || l.CPUs != 0 || l.Pids != 0 {
		t.Errorf("containerd service limits = %+v, want 1 GiB and the job's others", l)
	}
	for conf, want := range map[string]string{
		"[docker]\nservice_memory = \"lots\"\n":                          "docker.service_memory: ",
		"[docker]\nservice_memory = \"32m\"\n":                           "docker.service_memory 32m: less than the services' /dev/shm (docker.shm_size, 64 MiB)",
		"[containerd]\nshm_size = \"256m\"\nservice_memory = \"128m\"\n": "containerd.service_memory 128m: less than the services' /dev/shm (containerd.shm_size, 256 MiB)",
		"[containerd]\nservice_cpus = -1\n":                              "containerd.service_cpus: must not be negative",
		"[docker]\nservice_pids_limit = -5\n":                            "docker.service_pids_limit: must not be negative",
	} {
		if _, err := Load(write(t, conf), false); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", conf, err, want)
		}
	}
}

func TestPoolNetworksKey(t *testing.T) {
	for _, tc := range []struct{ conf, wantErr string }{
		{"[pool]\nnetworks = 4\n", ""},                            // Docker: held by holders
		{"executor = \"containerd\"\n[pool]\nnetworks = 4\n", ""}, // made by Airlock
		{"[docker]\nstep_server = \"off\"\n[pool]\nnetworks = 4\n", `pool.networks 4: with the Docker executor a pooled network is held by a container running the step server, and docker.step_server is "off"`},
		{"[pool]\nnetworks = -1\n", "pool.networks -1: must not be negative"},
	} {
		c, err := Load(write(t, tc.conf), false)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tc.conf, err)
		case tc.wantErr == "" && c.Pool.Networks != 4:
			t.Errorf("%q: pool.networks = %d, want 4", tc.conf, c.Pool.Networks)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: error %v, want one containing %q", tc.conf, err, tc.wantErr)
		}
	}
}

func TestJobMemory(t *testing.T) {
	for conf, want := range map[string]int64{
		"":                              2 << 30,
		"[docker]\nmemory = \"512m\"\n": 512 << 20,
		"executor = \"containerd\"\n[containerd]\nmemory = \"1g\"\n": 1 << 30,
		"executor = \"containerd\"\n[docker]\nmemory = \"1g\"\n":     2 << 30,
	} {
		c, err := Load(write(t, conf), false)
		if err != nil {
			t.Fatalf("%q: %v", conf, err)
		}
		if got := c.JobMemory(); got != want {
			t.Errorf("%q: JobMemory() = %d, want %d", conf, got, want)
		}
	}
}
