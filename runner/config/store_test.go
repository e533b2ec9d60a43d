package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStoreSection(t *testing.T) {
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"etcd without endpoints", "[store]\nbackend = \"etcd\"\n", "store.endpoints: the etcd backend needs"},
		{"unknown backend", "[store]\nbackend = \"consul\"\n", "must be local or etcd"},
		{"endpoints on local", "[store]\nendpoints = [\"http://127.0.0.1:2379\"]\n", "only the etcd backend"},
		{"bad endpoint", "[store]\nbackend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n", "must be an http(s) URL"},
		{"half a client cert", "[store]\nbackend = \"etcd\"\nendpoints = [\"https://e.test:2379\"]\ncert_file = \"/c\"\n", "set both or neither"},
		{"short heartbeat", "[store]\nbackend = \"etcd\"\nendpoints = [\"https://e.test:2379\"]\nheartbeat = \"10ms\"\n", "at least 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(p, []byte(tc.toml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p, false)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load = %v, want %q", err, tc.want)
			}
		})
	}
	p := filepath.Join(t.TempDir(), "config.toml")
	body := "[store]\nbackend = \"etcd\"\nendpoints = [\"https://e1.test:2379\", \"https://e2.test:2379\"]\nprefix = \"/ci/\"\nmax_staleness = \"2m\"\nheartbeat = \"5s\"\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Store.Fleet() || len(c.Store.Endpoints) != 2 || c.Store.MaxStaleness != 2*time.Minute || c.Store.Heartbeat != 5*time.Second || c.Store.Prefix != "/ci/" {
		t.Errorf("Store = %s", fmt.Sprintf("%+v", c.Store))
	}
}
