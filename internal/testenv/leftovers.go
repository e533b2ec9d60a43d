package testenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Leftovers says where a test looks for what a runner left on the host:
// the one leak checker of the integration tests. Zero fields are not
// looked at.
type Leftovers struct {
	// RunnerID: containers labelled io.airlock.runner=RunnerID, and
	// address pool entries of that runner.
	RunnerID string
	// Marks: substrings that mark the runner's links (ip -o link) and
	// firewall lines (iptables-save, ip6tables-save, nft list ruleset:
	// tables, chains, map elements): the runner tag's
	// interface and chain prefixes, "runner=ID ". testenv takes them from
	// the caller (netpolicy's names) so that netpolicy's own tests can
	// use it.
	Marks []string
	// RuntimeDir: its jobs/ directory must be empty.
	RuntimeDir string
	// PoolFile: the address pool file, holding no entry of RunnerID.
	PoolFile string
}

// List returns one line per leftover found.
func (l Leftovers) List(t testing.TB) []string {
	t.Helper()
	var out []string
	if len(l.Marks) > 0 {
		for _, argv := range [][]string{{"ip", "-o", "link"}, {"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
			b, err := exec.Command(argv[0], argv[1:]...).Output()
			if err != nil {
				t.Errorf("running %s: %v", strings.Join(argv, " "), err)
				continue
			}
			for line := range strings.Lines(string(b)) {
				for _, m := range l.Marks {
					if strings.Contains(line, m) {
						out = append(out, argv[0]+": "+strings.TrimSpace(line))
						break
					}
				}
			}
		}
	}
	if l.RunnerID != "" {
		out = append(out, l.containers(t)...)
	}
	if l.PoolFile != "" && l.RunnerID != "" {
		out = append(out, l.poolEntries(t)...)
	}
	if l.RuntimeDir != "" {
		ents, _ := os.ReadDir(filepath.Join(l.RuntimeDir, "jobs"))
		for _, e := range ents {
			out = append(out, "runtime directory "+e.Name())
		}
	}
	return out
}

// Assert fails the test for every leftover, and removes the containers.
func (l Leftovers) Assert(t testing.TB) {
	t.Helper()
	left := l.List(t)
	if len(left) == 0 {
		return
	}
	t.Errorf("resources of runner %s left on the host:\n%s", l.RunnerID, strings.Join(left, "\n"))
	for _, line := range left {
		if id, ok := strings.CutPrefix(line, "container "); ok {
			_ = exec.Command("docker", "rm", "-f", strings.Fields(id)[0]).Run()
		}
	}
}

func (l Leftovers) containers(t testing.TB) []string {
	b, err := exec.Command("docker", "ps", "-a", "--format", "{{.ID}} {{.Names}}",
		"--filter", "label=io.airlock.runner="+l.RunnerID).Output()
	if err != nil {
		t.Errorf("listing containers: %v", err)
		return nil
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		if s := strings.TrimSpace(line); s != "" {
			out = append(out, "container "+s)
		}
	}
	return out
}

func (l Leftovers) poolEntries(t testing.TB) []string {
	b, err := os.ReadFile(l.PoolFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Errorf("reading pool file: %v", err)
		return nil
	}
	var st struct {
		Allocations []struct {
			Prefix string `json:"prefix"`
			Runner string `json:"runner"`
			Job    string `json:"job"`
		} `json:"allocations"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Errorf("parsing pool file %s: %v", l.PoolFile, err)
	}
	var out []string
	for _, a := range st.Allocations {
		if a.Runner == l.RunnerID {
			out = append(out, fmt.Sprintf("pool entry %s of job %s", a.Prefix, a.Job))
		}
	}
	return out
}
