package stepd

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestEnvRoundTrip(t *testing.T) {
	in := []string{"TOKEN=a=b c\nd", "PATH=/opt/bin", "EMPTY="}
	raw, err := EncodeEnv(in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadEnv(bytes.NewReader(raw), []string{"PATH=/bin", "HOME=/root"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"PATH=/opt/bin", "HOME=/root", "TOKEN=a=b c\nd", "EMPTY="}
	if !slices.Equal(got, want) {
		t.Errorf("ReadEnv = %q, want %q", got, want)
	}
	if got, err := ReadEnv(strings.NewReader(""), []string{"A=1"}); err != nil || !slices.Equal(got, []string{"A=1"}) {
		t.Errorf("ReadEnv(empty) = %q, %v, want the base alone", got, err)
	}
}

// Bad entries are refused naming the key, never the value.
func TestEnvRefusals(t *testing.T) {
	const secret = "s3cr3t-value-xyz"
	for _, env := range [][]string{{"=" + secret}, {"NOEQUALS"}, {"BAD KEY=" + secret}, {"K=" + secret + "\x00x"}} {
		_, err := EncodeEnv(env)
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("EncodeEnv(%q) = %v, want a refusal without the value", env, err)
		}
	}
	if _, err := EncodeEnv([]string{"BIG=" + strings.Repeat("x", maxExecEnv)}); err == nil {
		t.Error("EncodeEnv of more than the bound succeeded")
	}
	for _, raw := range []string{"K=v", "=v\x00", strings.Repeat("x", maxExecEnv+1)} {
		if _, err := ReadEnv(strings.NewReader(raw), nil); err == nil {
			t.Errorf("ReadEnv(%.20q) succeeded, want an error", raw)
		}
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "svc")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/nonexistent:" + dir}
	if got, err := LookPath("svc", env); err != nil || got != bin {
		t.Errorf("LookPath(svc) = %q, %v, want %q", got, err, bin)
	}
	if got, err := LookPath("/x/y", env); err != nil || got != "/x/y" {
		t.Errorf("LookPath(/x/y) = %q, %v, want it as given", got, err)
	}
	for _, name := range []string{"plain", "missing", ""} {
		if _, err := LookPath(name, env); err == nil {
			t.Errorf("LookPath(%q) succeeded, want an error", name)
		}
	}
}
