package secrets

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/airlock-ci/airlock/runner/job"
)

// grantFile is the TOML form of grants: `[[grant]]` tables.
type grantFile struct {
	Grant []grantEntry `toml:"grant"`
}

type grantEntry struct {
	ID            string            `toml:"id,omitempty"`
	Secret        string            `toml:"secret"`
	Repo          string            `toml:"repo"`
	Refs          []string          `toml:"refs,omitempty"`
	ProtectedOnly bool              `toml:"protected_only,omitempty"`
	Envs          []string          `toml:"envs,omitempty"`
	Source        string            `toml:"source,omitempty"`
	Events        []string          `toml:"events,omitempty"`
	AllowForks    bool              `toml:"allow_forks,omitempty"`
	Instance      string            `toml:"instance,omitempty"`
	Deliver       string            `toml:"deliver"`
	Var           string            `toml:"var,omitempty"`
	TTL           string            `toml:"ttl,omitempty"`
	Hosts         []string          `toml:"hosts,omitempty"`
	Header        string            `toml:"header,omitempty"`
	Scope         map[string]string `toml:"scope,omitempty"`
	Created       *time.Time        `toml:"created,omitempty"`
}

// ExportGrants writes grants as TOML.
func ExportGrants(w io.Writer, gs []Grant) error {
	var f grantFile
	for _, g := range gs {
		e := grantEntry{ID: g.ID, Secret: g.Secret, Repo: g.Repo, Refs: g.Refs, ProtectedOnly: g.ProtectedOnly,
			Envs: g.Envs, Source: string(g.Source), Events: g.Events, AllowForks: g.AllowForks, Instance: g.Instance, Deliver: string(g.Delivery), Var: g.Var,
			Hosts: g.Hosts, Header: g.Header, Scope: g.Scope}
		if g.TTL > 0 {
			e.TTL = g.TTL.String()
		}
		if !g.Created.IsZero() {
			c := g.Created.UTC()
			e.Created = &c
		}
		f.Grant = append(f.Grant, e)
	}
	if err := toml.NewEncoder(w).Encode(f); err != nil {
		return fmt.Errorf("encoding grants: %w", err)
	}
	return nil
}

// ParseGrants reads TOML grants and returns every problem at once, each
// naming the entry and the key. Nothing is stored; see Store.PutGrants.
func ParseGrants(r io.Reader) ([]Grant, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading grants: %w", err)
	}
	var f grantFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("parsing grants: %w", err)
	}
	var errs []error
	if len(md.Undecoded()) > 0 {
		// Name the entry of each unknown key: decode again, loosely.
		var loose struct {
			Grant []map[string]any `toml:"grant"`
		}
		known := knownGrantKeys()
		if _, err := toml.Decode(string(data), &loose); err == nil {
			for i, e := range loose.Grant {
				for _, k := range sortedAnyKeys(e) {
					if !known[k] {
						errs = append(errs, fmt.Errorf("grant %d (secret %q): %s: unknown key", i+1, e["secret"], k))
					}
				}
			}
		}
		for _, k := range md.Undecoded() {
			if len(k) == 0 || k[0] != "grant" {
				errs = append(errs, fmt.Errorf("%s: unknown key (only [[grant]] tables are allowed)", k))
			}
		}
	}
	out := make([]Grant, 0, len(f.Grant))
	for i, e := range f.Grant {
		g := Grant{ID: e.ID, Secret: e.Secret, Repo: e.Repo, Refs: e.Refs, ProtectedOnly: e.ProtectedOnly,
			Envs: e.Envs, Source: job.Source(e.Source), Events: e.Events, AllowForks: e.AllowForks, Instance: e.Instance, Delivery: job.Delivery(e.Deliver), Var: e.Var,
			Hosts: e.Hosts, Header: e.Header, Scope: e.Scope}
		where := fmt.Sprintf("grant %d (id %q, secret %q)", i+1, e.ID, e.Secret)
		if e.TTL != "" {
			d, err := time.ParseDuration(e.TTL)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: ttl %q: %w", where, e.TTL, err))
			}
			g.TTL = d
		}
		if e.Created != nil {
			g.Created = *e.Created
		}
		errs = append(errs, prefixed(where, g.Validate())...)
		out = append(out, g)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("validating grants: %w", err)
	}
	return out, nil
}

func knownGrantKeys() map[string]bool {
	known := map[string]bool{}
	t := reflect.TypeOf(grantEntry{})
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		known[name] = true
	}
	return known
}

func sortedAnyKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// prefixed returns each error joined in err, prefixed with where.
func prefixed(where string, err error) []error {
	if err == nil {
		return nil
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			errs = append(errs, prefixed(where, e)...)
		}
		return errs
	}
	return []error{fmt.Errorf("%s: %w", where, err)}
}
