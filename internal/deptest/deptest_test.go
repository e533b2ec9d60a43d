// Package deptest keeps Airlock's layering (DESIGN.md, STYLE.md): it asks
// `go list` for every package's dependencies and fails, listing each
// violation, when a package depends on what its layer must not know.
package deptest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/airlock-ci/airlock"

// pkg is what `go list -json` says of a package (test files excluded).
type pkg struct {
	ImportPath string
	Imports    []string // direct
	Deps       []string // transitive
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,Deps", module+"/...")
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list: %v\n%s", err, stderr)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages of %s, want the whole module", len(pkgs), module)
	}
	return pkgs
}

// rule forbids packages matching From to depend on packages matching any
// of Not (transitively, or directly when Direct is set).
type rule struct {
	name   string
	from   func(string) bool
	not    func(string) bool
	direct bool
	// todo: the rule is not enforced yet; its violations are logged. Set
	// to "" once main has none.
	todo string
}

func is(paths ...string) func(string) bool {
	return func(p string) bool {
		for _, x := range paths {
			if p == module+"/"+x {
				return true
			}
		}
		return false
	}
}

func under(prefixes ...string) func(string) bool {
	return func(p string) bool {
		for _, x := range prefixes {
			if p == module+"/"+x || strings.HasPrefix(p, module+"/"+x+"/") {
				return true
			}
		}
		return false
	}
}

func ours(p string) bool { return p == module || strings.HasPrefix(p, module+"/") }

var rules = []rule{
	{
		name: "runner/job is a leaf: it imports nothing of Airlock's",
		from: is("runner/job"),
		not:  ours,
	},
	{
		name: "executors know nothing of job sources or secrets",
		from: under("executors"),
		not:  under("runner/gitlab", "runner/github", "secrets"),
	},
	{
		name: "the lifecycle package knows no concrete executor",
		from: is("runner"),
		not:  under("executors/docker", "executors/containerd"),
	},
	{
		name: "the lifecycle package knows no coordinator (it serves them through runner.Coordinator)",
		from: is("runner"),
		not:  under("runner/gitlab", "runner/github"),
	},
	{
		name: "secrets knows no egress policy engine",
		from: under("secrets"),
		not: func(p string) bool {
			return is("runner")(p) || under("netpolicy", "executors", "sandbox", "runner/gitlab", "runner/github")(p)
		},
	},
	{
		name: "coordinators do not import the lifecycle package",
		from: under("runner/gitlab", "runner/github"),
		not:  is("runner"),
	},
	{
		name: "only cmd/ imports cobra",
		from: func(p string) bool { return !under("cmd")(p) },
		not: func(p string) bool {
			return p == "github.com/spf13/cobra" || strings.HasPrefix(p, "github.com/spf13/cobra/")
		},
		direct: true,
	},
}

func TestLayering(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("the go command is needed: %v", err)
	}
	pkgs := listPackages(t)
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			var violations []string
			for _, p := range pkgs {
				if !r.from(p.ImportPath) {
					continue
				}
				deps := p.Deps
				if r.direct {
					deps = p.Imports
				}
				for _, d := range deps {
					if r.not(d) {
						violations = append(violations, strings.TrimPrefix(p.ImportPath, module+"/")+" -> "+strings.TrimPrefix(d, module+"/"))
					}
				}
			}
			if len(violations) == 0 {
				return
			}
			if r.todo != "" {
				t.Logf("%s; not enforced yet, violations:\n\t%s", r.todo, strings.Join(violations, "\n\t"))
				return
			}
			t.Errorf("layering broken:\n\t%s", strings.Join(violations, "\n\t"))
		})
	}
}

// TestRulesBite makes sure each rule can fail: a rule whose from matches
// no package of the module is a typo that checks nothing.
func TestRulesBite(t *testing.T) {
	pkgs := listPackages(t)
	for _, r := range rules {
		found := false
		for _, p := range pkgs {
			if r.from(p.ImportPath) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("rule %q applies to no package", r.name)
		}
	}
}
