package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/runner/config"
)

// log_level and log_format in config.toml apply; flags (or their
// AIRLOCK_LOG_* variables) override them.
func TestLogSettingsFromConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte("log_level = \"debug\"\nlog_format = \"json\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                  string
		flagLevel, flagFormat string
		wantJSON              bool
		wantDebug             bool
	}{
		{"config only", "", "", true, true},
		{"flags override", "info", "text", false, false},
		{"format flag only", "", "text", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			g := &globals{LogLevel: tc.flagLevel, LogFormat: tc.flagFormat, logOut: &buf}
			g.configure(cfg)
			g.Logger().Debug("debug line")
			g.Logger().Info("info line")
			out := buf.String()
			if got := strings.Contains(out, "debug line"); got != tc.wantDebug {
				t.Errorf("debug line logged = %v, want %v:\n%s", got, tc.wantDebug, out)
			}
			first, _, _ := strings.Cut(out, "\n")
			if got := json.Valid([]byte(first)); got != tc.wantJSON {
				t.Errorf("JSON output = %v, want %v:\n%s", got, tc.wantJSON, out)
			}
		})
	}
}

func TestLogFlagsChecked(t *testing.T) {
	for _, args := range [][]string{{"--log-level", "loud", "version"}, {"--log-format", "xml", "version"}} {
		root := newRootCmd()
		root.SetArgs(args)
		root.SetOut(&bytes.Buffer{})
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("airlock %v = %v, want an error naming %s", args, err, args[0])
		}
	}
}
