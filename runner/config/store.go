package config

import (
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Store backends.
const (
	StoreLocal = "local"
	StoreEtcd  = "etcd"
)

// Store is [store]: where secrets, grants and policies live. "local" is
// state.db; "etcd" is one store for a fleet of hosts (secrets are sealed
// on the host before they reach etcd; the journal stays in state.db and
// is mirrored, handles only, for peer revocation).
type Store struct {
	Backend   string   `toml:"backend"`
	Endpoints []string `toml:"endpoints"`
	CertFile  string   `toml:"cert_file"`
	KeyFile   string   `toml:"key_file"`
	CAFile    string   `toml:"ca_file"`
	Prefix    string   `toml:"prefix"`
	// MaxStaleness: how long a host cut off from etcd keeps deciding
	// grants from its snapshot before refusing jobs that need one.
	MaxStaleness time.Duration `toml:"max_staleness"`
	// Heartbeat: the TTL of the host's registration; a host silent for
	// longer is dead to its peers, which revoke its credentials.
	Heartbeat time.Duration `toml:"heartbeat"`
	// Host names this host in the fleet (default: hostname-runnerid).
	Host string `toml:"host"`
}

// Fleet reports whether the store is shared by a fleet.
func (s *Store) Fleet() bool { return s.Backend == StoreEtcd }

func (s *Store) validate() []error {
	var errs []error
	switch s.Backend {
	case "", StoreLocal:
		if len(s.Endpoints) > 0 {
			errs = append(errs, errors.New("store.endpoints: only the etcd backend uses endpoints (set store.backend = \"etcd\")"))
		}
		return errs
	case StoreEtcd:
	default:
		return []error{fmt.Errorf("store.backend %q: must be local or etcd", s.Backend)}
	}
	if len(s.Endpoints) == 0 {
		errs = append(errs, errors.New("store.endpoints: the etcd backend needs at least one endpoint (https://etcd1.example.test:2379)"))
	}
	for _, e := range s.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("store.endpoints %q: must be an http(s) URL", e))
		}
	}
	if (s.CertFile == "") != (s.KeyFile == "") {
		errs = append(errs, errors.New("store.cert_file and store.key_file: set both or neither"))
	}
	if s.MaxStaleness < 0 {
		errs = append(errs, errors.New("store.max_staleness: must not be negative"))
	}
	if s.Heartbeat < 0 || (s.Heartbeat > 0 && s.Heartbeat < time.Second) {
		errs = append(errs, errors.New("store.heartbeat: must be at least 1s"))
	}
	return errs
}
