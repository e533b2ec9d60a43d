package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/internal/wiring"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/runner/hostcheck"
	"github.com/airlock-ci/airlock/secrets"
)

// fleetAuditKeys returns every audit key registered with the fleet store
// (none outside fleet mode).
func fleetAuditKeys(g *globals) ([]ed25519.PublicKey, error) {
	cfg, err := config.Load(g.ConfigPath, g.ConfigPath == config.DefaultPath)
	if err != nil || !cfg.Store.Fleet() {
		return nil, err
	}
	var keys []ed25519.PublicKey
	err = readSecretStore(g, func(st *secrets.Store) error {
		var errs []error
		for host, vk := range st.AuditKeys() {
			k, err := audit.ParsePublicKey(vk)
			if err != nil {
				errs = append(errs, fmt.Errorf("audit key of %s: %w", host, err))
				continue
			}
			keys = append(keys, k)
		}
		return errors.Join(errs...)
	})
	return keys, err
}

// registerAuditKey registers this host's audit key with the fleet store.
func registerAuditKey(g *globals, verifierKey string) error {
	cfg, err := config.Load(g.ConfigPath, g.ConfigPath == config.DefaultPath)
	if err != nil {
		return err
	}
	if !cfg.Store.Fleet() {
		return errors.New("--register needs [store] backend = \"etcd\" in the configuration")
	}
	id, err := runner.LoadOrCreateID(auditStateDir(g))
	if err != nil {
		return err
	}
	return withSecretStore(g, func(st *secrets.Store) error {
		return st.PutAuditKey(wiring.FleetHost(cfg.Store, id), verifierKey)
	})
}

// fleetCheck is doctor's check of the fleet store: etcd answers, and this
// host's sealing key is the fleet's (it opens the fleet's key check).
func fleetCheck(g *globals) (hostcheck.Result, bool) {
	cfg, err := config.Load(g.ConfigPath, g.ConfigPath == config.DefaultPath)
	if err != nil || !cfg.Store.Fleet() {
		return hostcheck.Result{}, false
	}
	r := hostcheck.Result{Name: "fleet store"}
	err = readSecretStore(g, func(st *secrets.Store) error {
		r.Detail = fmt.Sprintf("etcd %s answers; this host's sealing key is the fleet's (key id %s)",
			strings.Join(cfg.Store.Endpoints, ","), st.KeyID())
		return nil
	})
	if err != nil {
		r.Status, r.Detail = hostcheck.Fail, err.Error()
		r.Fix = "check [store] endpoints and TLS files; copy the state.key every other host of the fleet uses"
		return r, true
	}
	r.Status = hostcheck.OK
	return r, true
}
