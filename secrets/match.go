package secrets

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/airlock-ci/airlock/runner/job"
)

// Patterns (repo, ref, environment) are globs: '*' matches any run of
// characters except '/', '**' any run including '/', '?' one character
// except '/'. Everything else matches itself. `group/*` matches
// group/app but not group/sub/app; `group/**` matches both.

func validPattern(p string) error {
	if p == "" {
		return errors.New("empty pattern")
	}
	if strings.Contains(p, "***") {
		return errors.New("'***' is not a pattern; use '**'")
	}
	if strings.ContainsAny(p, " \t\n[]{}") {
		return errors.New("must not contain spaces, brackets or braces")
	}
	return nil
}

// MatchPattern reports whether s matches the glob pattern.
func MatchPattern(pattern, s string) bool {
	return globMatch(pattern, s)
}

// globMatch matches with memoisation over (pattern offset, string
// offset), so a hostile ref name cannot make a many-star pattern take
// exponential time: at most len(p)*len(s) states, each visited once.
func globMatch(p, s string) bool {
	m := globMatcher{p: p, s: s, memo: make([]int8, (len(p)+1)*(len(s)+1))}
	return m.match(0, 0)
}

type globMatcher struct {
	p, s string
	memo []int8 // 0 unknown, 1 match, 2 no match
}

func (m *globMatcher) match(i, j int) bool {
	k := i*(len(m.s)+1) + j
	if m.memo[k] != 0 {
		return m.memo[k] == 1
	}
	ok := m.step(i, j)
	m.memo[k] = 2
	if ok {
		m.memo[k] = 1
	}
	return ok
}

func (m *globMatcher) step(i, j int) bool {
	p, s := m.p, m.s
	if i == len(p) {
		return j == len(s)
	}
	switch {
	case strings.HasPrefix(p[i:], "**"):
		for k := j; k <= len(s); k++ {
			if m.match(i+2, k) {
				return true
			}
		}
		return false
	case p[i] == '*':
		for k := j; k <= len(s); k++ {
			if m.match(i+1, k) {
				return true
			}
			if k < len(s) && s[k] == '/' {
				break
			}
		}
		return false
	case p[i] == '?':
		return j < len(s) && s[j] != '/' && m.match(i+1, j+1)
	default:
		return j < len(s) && s[j] == p[i] && m.match(i+1, j+1)
	}
}

// Specificity orders patterns from broad to narrow: the number of literal
// characters, with a pattern without wildcards above any with one.
func Specificity(pattern string) int {
	lit := 0
	wild := false
	for i := 0; i < len(pattern); i++ {
		switch pattern[i] {
		case '*', '?':
			wild = true
		default:
			lit++
		}
	}
	if !wild {
		lit += 1 << 16
	}
	return lit
}

func matchAny(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if globMatch(p, s) {
			return true
		}
	}
	return false
}

// NearMiss is a grant of the requested secret that did not match, with
// every reason why.
type NearMiss struct {
	Grant   Grant
	Reasons []string
}

// Decision is the grant engine's answer for one declared secret.
type Decision struct {
	Identity   JobIdentity
	Request    job.SecretRequest
	Grant      *Grant     // the matching grant; nil = refused
	NearMisses []NearMiss // refused: the grants of this secret and why each did not match
}

// Allowed reports whether a grant matched.
func (d Decision) Allowed() bool { return d.Grant != nil }

// Delivery is how the credential is delivered: the grant's delivery.
func (d Decision) Delivery() job.Delivery {
	if d.Grant == nil {
		return ""
	}
	return d.Grant.Delivery
}

// VarName is the variable the credential is delivered in: the job's
// declared variable, else the grant's, else one derived from the name.
func (d Decision) VarName() string {
	switch {
	case d.Request.Var != "":
		return d.Request.Var
	case d.Grant != nil && d.Grant.Var != "":
		return d.Grant.Var
	}
	return job.DefaultVarName(d.Request.Name)
}

// RefusedError is the error of a refused secret. Its message names the
// secret, repo, ref and environment, and the command an admin would run.
type RefusedError struct{ Decision Decision }

func (e *RefusedError) Error() string { return e.Decision.refusal() }

// Err returns nil when allowed, else a *RefusedError.
func (d Decision) Err() error {
	if d.Allowed() {
		return nil
	}
	return &RefusedError{Decision: d}
}

func (d Decision) refusal() string {
	id := d.Identity
	env := id.Environment
	if env == "" {
		env = "(none)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "secret %q is not granted to repo %q ref %q (protected: %t) environment %s source %s",
		d.Request.Name, id.Repo, id.Ref, id.Protected, env, sourceName(id.Source))
	if d.Request.Delivery != "" {
		fmt.Fprintf(&b, " with delivery %s", d.Request.Delivery)
	}
	if len(d.NearMisses) == 0 {
		b.WriteString("; no grant exists for this secret")
	} else {
		for _, nm := range d.NearMisses {
			fmt.Fprintf(&b, "; grant %s does not match: %s", nm.Grant.ID, strings.Join(nm.Reasons, ", "))
		}
	}
	fmt.Fprintf(&b, "; an admin can grant it with: %s", d.Suggestion())
	return b.String()
}

func sourceName(s job.Source) string {
	if s == "" {
		return "(any)"
	}
	return string(s)
}

// Suggestion is the `airlock grant add` line that would allow the request.
func (d Decision) Suggestion() string {
	id := d.Identity
	parts := []string{"airlock grant add", shellQuote(d.Request.Name), "--repo", shellQuote(id.Repo)}
	if id.Ref != "" {
		parts = append(parts, "--ref", shellQuote(id.Ref))
	}
	if id.Protected {
		parts = append(parts, "--protected-only")
	}
	if id.Environment != "" {
		parts = append(parts, "--env", shellQuote(id.Environment))
	}
	if id.Source != "" {
		parts = append(parts, "--source", string(id.Source))
	}
	if id.Fork {
		parts = append(parts, "--allow-forks")
	}
	if id.Instance != "" {
		parts = append(parts, "--instance", shellQuote(id.Instance))
	}
	del := d.Request.Delivery
	if del == "" {
		del = job.DeliverEnv
	}
	parts = append(parts, "--deliver", string(del))
	if del == job.DeliverProxy || del == job.DeliverMTLS {
		parts = append(parts, "--host", "HOST")
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	safe := s != ""
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./:@=", c)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// mismatch returns every reason g does not match the request, in the order
// repo, ref, protected, env, source, delivery; nil means it matches.
func mismatch(g *Grant, id JobIdentity, req job.SecretRequest) []string {
	var why []string
	if !globMatch(g.Repo, id.Repo) {
		why = append(why, fmt.Sprintf("repo %q does not match %q", id.Repo, g.Repo))
	}
	if !matchAny(g.Refs, id.Ref) {
		why = append(why, fmt.Sprintf("ref %q does not match %s", id.Ref, strings.Join(quoteAll(g.Refs), " or ")))
	}
	if g.ProtectedOnly && !id.Protected {
		why = append(why, fmt.Sprintf("ref %q is not protected and the grant is protected-only", id.Ref))
	}
	if len(g.Envs) > 0 && !matchAny(g.Envs, id.Environment) {
		env := id.Environment
		if env == "" {
			env = "(none)"
		}
		why = append(why, fmt.Sprintf("environment %s does not match %s", env, strings.Join(quoteAll(g.Envs), " or ")))
	}
	if g.Source != "" && g.Source != id.Source {
		why = append(why, fmt.Sprintf("source %s is not %s", sourceName(id.Source), g.Source))
	}
	if len(g.Events) > 0 && !matchAny(g.Events, id.Event) {
		why = append(why, fmt.Sprintf("event %q does not match %s", id.Event, strings.Join(quoteAll(g.Events), " or ")))
	}
	if id.Fork && !g.AllowForks {
		why = append(why, "the job runs code from a fork and the grant does not allow forks")
	}
	if g.Instance != "" && !sameInstance(g.Instance, id.Instance) {
		inst := id.Instance
		if inst == "" {
			inst = "(none)"
		}
		why = append(why, fmt.Sprintf("instance %s is not %s", inst, g.Instance))
	}
	if req.Delivery != "" && req.Delivery != g.Delivery {
		why = append(why, fmt.Sprintf("delivery %s requested but the grant delivers by %s", req.Delivery, g.Delivery))
	}
	return why
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// Decide matches one declared secret against the grants. Default deny:
// without a matching grant the decision is a refusal listing every grant
// of the same secret with the reasons it did not match. When several
// grants match, the most specific wins: the longest literal repo pattern,
// then a grant restricted to refs, environments, protected refs or a
// source over one that is not, then the lowest id (deterministic).
func Decide(grants []Grant, id JobIdentity, req job.SecretRequest) Decision {
	d := Decision{Identity: id, Request: req}
	var matches []Grant
	for i := range grants {
		g := &grants[i]
		if g.Secret != req.Name {
			continue
		}
		if why := mismatch(g, id, req); len(why) > 0 {
			d.NearMisses = append(d.NearMisses, NearMiss{Grant: *g, Reasons: why})
			continue
		}
		matches = append(matches, *g)
	}
	if len(matches) == 0 {
		sort.Slice(d.NearMisses, func(i, j int) bool { return d.NearMisses[i].Grant.ID < d.NearMisses[j].Grant.ID })
		return d
	}
	sort.Slice(matches, func(i, j int) bool {
		a, b := grantRank(&matches[i]), grantRank(&matches[j])
		if a != b {
			return a > b
		}
		return matches[i].ID < matches[j].ID
	})
	d.Grant = &matches[0]
	d.NearMisses = nil
	return d
}

func grantRank(g *Grant) int {
	r := Specificity(g.Repo) * 16
	if len(g.Refs) > 0 {
		r += 8
	}
	if len(g.Envs) > 0 {
		r += 4
	}
	if g.ProtectedOnly {
		r += 2
	}
	if g.Source != "" {
		r++
	}
	if g.Instance != "" {
		r++
	}
	return r
}

// Ceiling returns the egress ceiling for repo of the coordinator instance
// ("" for local jobs): among the policies whose pattern matches and whose
// instance, if set, is that one, the one with the most specific pattern;
// of equally specific ones the instance's own; then the lexically smallest
// pattern. ok is false when no policy matches; the caller then allows no
// egress beyond what the runner itself needs.
func Ceiling(policies []EgressPolicy, repo, instance string) (p EgressPolicy, ok bool) {
	best := -1
	for _, c := range policies {
		if !globMatch(c.RepoPattern, repo) || c.Instance != "" && !sameInstance(c.Instance, instance) {
			continue
		}
		s := 2 * Specificity(c.RepoPattern)
		if c.Instance != "" {
			s++
		}
		if s > best || s == best && c.RepoPattern < p.RepoPattern {
			best, p, ok = s, c, true
		}
	}
	return p, ok
}
