package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGitHubEntries(t *testing.T) {
	tests := []struct {
		name, toml, wantErr string
	}{
		{name: "valid", toml: "[[github]]\nname = \"gh-1\"\nurl = \"https://github.com/acme/app\"\nlabels = [\"airlock\"]\nlimit = 1\n"},
		{name: "limit above one", toml: "[[github]]\nname = \"gh-1\"\nurl = \"https://github.com/acme\"\nlimit = 2\n", wantErr: "github[0].limit"},
		{name: "bad url", toml: "[[github]]\nname = \"gh-1\"\nurl = \"https://github.com/\"\n", wantErr: "github[0].url"},
		{name: "duplicate", toml: "[[github]]\nname = \"a\"\nurl = \"https://github.com/x\"\n[[github]]\nname = \"a\"\nurl = \"https://github.com/y\"\n", wantErr: "github[1].name"},
		{name: "unknown key", toml: "[[github]]\nname = \"a\"\nurl = \"https://github.com/x\"\ntoken = \"t\"\n", wantErr: "unknown key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(p, []byte(tc.toml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(p, false)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(c.GitHub) != 1 || c.GitHub[0].Labels[0] != "airlock" {
					t.Errorf("GitHub = %+v", c.GitHub)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Load = %v, want an error naming %q", err, tc.wantErr)
			}
		})
	}
}
