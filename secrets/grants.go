package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// AddGrant validates g, gives it an id and a creation time when it has
// none, and stores it. The secret must exist.
func (s *Store) AddGrant(g Grant) (Grant, error) {
	out, err := s.putGrants([]Grant{g})
	if err != nil {
		return Grant{}, err
	}
	return out[0], nil
}

// PutGrants validates every grant, and only if all are valid stores them
// in one transaction (replacing grants with the same id). The error names
// each bad entry by index and id.
func (s *Store) PutGrants(gs []Grant) ([]Grant, error) { return s.putGrants(gs) }

func (s *Store) putGrants(gs []Grant) ([]Grant, error) {
	known, err := s.knownSecrets(gs)
	if err != nil {
		return nil, err
	}
	out := make([]Grant, len(gs))
	var errs []error
	seen := map[string]int{}
	for i, g := range gs {
		if g.ID == "" {
			g.ID = newID(8)
		}
		if g.Created.IsZero() {
			g.Created = time.Now().UTC()
		}
		where := fmt.Sprintf("grant %d (id %s, secret %s)", i+1, g.ID, g.Secret)
		if err := g.Validate(); err != nil {
			errs = append(errs, prefixed(where, err)...)
		} else if !known[g.Secret] {
			errs = append(errs, fmt.Errorf("%s: secret: no secret named %q (create it with airlock secret set %s)", where, g.Secret, g.Secret))
		}
		if j, dup := seen[g.ID]; dup {
			errs = append(errs, fmt.Errorf("%s: id: duplicates grant %d", where, j+1))
		}
		seen[g.ID] = i
		out[i] = g
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("validating grants: %w", err)
	}
	ops := make([]record, 0, len(out))
	for _, g := range out {
		v, err := json.Marshal(g)
		if err != nil {
			return nil, fmt.Errorf("storing grants: %w", err)
		}
		ops = append(ops, record{Kind: KindGrants, Key: g.ID, Value: v, What: fmt.Sprintf("grant %s", g.ID),
			Require: [][2]string{{KindSecrets, g.Secret}}})
	}
	err = s.commit(ops...)
	if err != nil {
		return nil, fmt.Errorf("storing grants: %w", err)
	}
	return out, nil
}

// knownSecrets is the set of secret names that exist. In fleet mode a
// name the local snapshot lacks may have been created on another host a
// moment ago: the snapshot is synced once before the name is called
// missing (the transaction's Require stays the authority either way).
func (s *Store) knownSecrets(gs []Grant) (map[string]bool, error) {
	list := func() (map[string]bool, error) {
		infos, err := s.Secrets()
		if err != nil {
			return nil, err
		}
		known := map[string]bool{}
		for _, i := range infos {
			known[i.Name] = true
		}
		return known, nil
	}
	known, err := list()
	if err != nil {
		return nil, err
	}
	sy, ok := s.remote.(Syncer)
	if !ok {
		return known, nil
	}
	for _, g := range gs {
		if g.Secret != "" && !known[g.Secret] {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := sy.Sync(ctx); err != nil {
				return nil, fmt.Errorf("validating grants: %w", err)
			}
			return list()
		}
	}
	return known, nil
}

// Grants returns every grant, sorted by secret then id. In fleet mode it
// fails with ErrStale once the snapshot is older than its bound: a grant
// revoked on the fleet must not keep working on a host cut off from it.
func (s *Store) Grants() ([]Grant, error) {
	if s.remote != nil {
		if err := s.remote.Fresh(); err != nil {
			return nil, fmt.Errorf("listing grants: %w", err)
		}
	}
	var out []Grant
	err := s.listRecords(KindGrants, func(k, v []byte) error {
		var g Grant
		if err := json.Unmarshal(v, &g); err != nil {
			return fmt.Errorf("decoding grant %s: %w", k, err)
		}
		out = append(out, g)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing grants: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Secret != out[j].Secret {
			return out[i].Secret < out[j].Secret
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// DeleteGrant removes the grant with id.
func (s *Store) DeleteGrant(id string) error {
	if err := s.commit(record{Kind: KindGrants, Key: id, What: fmt.Sprintf("grant %q", id), MustExist: true}); err != nil {
		return fmt.Errorf("deleting grant %s: %w", id, err)
	}
	return nil
}

// Decide matches one declared secret of a job against the stored grants.
func (s *Store) Decide(id JobIdentity, req job.SecretRequest) (Decision, error) {
	gs, err := s.Grants()
	if err != nil {
		return Decision{}, err
	}
	return Decide(gs, id, req), nil
}

// SetPolicy creates or replaces the egress ceiling for p.RepoPattern (on
// p.Instance, if set).
func (s *Store) SetPolicy(p EgressPolicy) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("validating policy: %w", err)
	}
	if p.Created.IsZero() {
		p.Created = time.Now().UTC()
	}
	v, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("storing policy %s: %w", p.Scope(), err)
	}
	if err := s.commit(record{Kind: KindPolicies, Key: policyKey(p.RepoPattern, p.Instance), Value: v}); err != nil {
		return fmt.Errorf("storing policy %s: %w", p.Scope(), err)
	}
	return nil
}

// Policies returns every egress ceiling, sorted by pattern.
func (s *Store) Policies() ([]EgressPolicy, error) {
	var out []EgressPolicy
	err := s.listRecords(KindPolicies, func(k, v []byte) error {
		var p EgressPolicy
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("decoding policy %s: %w", k, err)
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing policies: %w", err)
	}
	return out, nil
}

// DeletePolicy removes the ceiling for a repo pattern on instance ("":
// the one for any instance).
func (s *Store) DeletePolicy(pattern, instance string) error {
	scope := EgressPolicy{RepoPattern: pattern, Instance: instance}.Scope()
	if err := s.commit(record{Kind: KindPolicies, Key: policyKey(pattern, instance), What: fmt.Sprintf("policy for %q", scope), MustExist: true}); err != nil {
		return fmt.Errorf("deleting policy %s: %w", scope, err)
	}
	return nil
}

// EgressCeiling returns the ceiling for repo on instance (see Ceiling).
func (s *Store) EgressCeiling(repo, instance string) (EgressPolicy, bool, error) {
	ps, err := s.Policies()
	if err != nil {
		return EgressPolicy{}, false, err
	}
	p, ok := Ceiling(ps, repo, instance)
	return p, ok, nil
}
