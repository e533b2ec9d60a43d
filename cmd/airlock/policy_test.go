package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// policy set/ls/rm with --instance: a ceiling per coordinator instance
// beside the one for any instance, each shown and removed on its own.
func TestPolicyPerInstance(t *testing.T) {
	sd := "--state-dir=" + filepath.Join(t.TempDir(), "state")
	a := "https://gitlab.a.test"
	run := func(args ...string) string {
		t.Helper()
		out, err := cli(t, "", append(args, sd)...)
		if err != nil {
			t.Fatalf("airlock %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	run("policy", "set", "--repo", "acme/*", "--egress", "any.test:443")
	if out := run("policy", "set", "--repo", "acme/*", "--instance", a, "--egress", "a.test:443"); !strings.Contains(out, "acme/* on "+a) {
		t.Errorf("policy set --instance said %q, want the instance named", out)
	}
	ls := run("policy", "ls")
	for _, want := range []string{"INSTANCE", "acme/*  any", "acme/*  " + a} {
		if !strings.Contains(ls, want) {
			t.Errorf("policy ls lacks %q:\n%s", want, ls)
		}
	}
	if out := run("policy", "ls", "--repo", "acme/app", "--instance", a); !strings.Contains(out, "a.test:443") || strings.Contains(out, "any.test") {
		t.Errorf("policy ls --repo acme/app --instance a:\n%s\nwant a's ceiling only", out)
	}
	if out := run("policy", "ls", "--repo", "acme/app", "--instance", "https://gitlab.b.test"); !strings.Contains(out, "any.test:443") {
		t.Errorf("policy ls --repo acme/app --instance b:\n%s\nwant the ceiling for any instance", out)
	}
	run("policy", "rm", "--repo", "acme/*", "--instance", a)
	if ls := run("policy", "ls"); strings.Contains(ls, a) || !strings.Contains(ls, "any.test:443") {
		t.Errorf("after rm --instance a:\n%s\nwant only the ceiling for any instance", ls)
	}
	if out, err := cli(t, "", "policy", "set", "--repo", "acme/*", "--instance", "gitlab.a.test", "--egress", "a.test:443", sd); err == nil || !strings.Contains(out+err.Error(), `instance "gitlab.a.test"`) {
		t.Errorf("policy set --instance without a scheme = %v\n%s; want it refused by name", err, out)
	}
}
