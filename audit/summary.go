package audit

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// Summary returns a one-line human summary of a record (for `airlock audit show`).
func (r Record) Summary() string {
	s := r.String
	opt := func(label, v string) string {
		if v == "" {
			return ""
		}
		return " " + label + "=" + v
	}
	switch r.Type {
	case JobAccepted:
		return fmt.Sprintf("%s %s@%s%s%s image=%s", s(FieldSource), s(FieldRepo), s(FieldRef),
			opt("env", s(FieldEnvironment)), opt("protected", s(FieldProtected)), s(FieldImage))
	case GrantDecision:
		return fmt.Sprintf("%s %s%s%s%s", s(FieldSecret), s(FieldDecision), opt("grant", s(FieldGrant)),
			opt("delivery", s(FieldDelivery)), opt("reason", s(FieldReason)))
	case CredentialMinted, CredentialUsed, CredentialRevoked:
		return fmt.Sprintf("%s%s%s%s%s%s", s(FieldSecret), opt("grant", s(FieldGrant)), opt("lease", s(FieldLease)),
			opt("fp", s(FieldFingerprint)), opt("host", s(FieldHost)), opt("expires", s(FieldExpires)))
	case CredentialRevokeFailed:
		return fmt.Sprintf("%s lease=%s attempt=%s: %s", s(FieldSecret), s(FieldLease), s(FieldAttempt), s(FieldError))
	case EgressAllowed, EgressDenied:
		return fmt.Sprintf("%s %s %s%s bytes=%s %sms", s(FieldKind), hostPort(s(FieldHost), r.Int(FieldPort)),
			s(FieldVerdict), opt("reason", s(FieldReason)), s(FieldBytes), s(FieldDuration))
	case DNSAnswered, DNSRefused:
		return fmt.Sprintf("%s %s %s%s", s(FieldQType), s(FieldHost), s(FieldVerdict), opt("reason", s(FieldReason)))
	case ProxiedRequest:
		return fmt.Sprintf("%s https://%s%s -> %s (%s bytes, %sms)%s", s(FieldMethod), s(FieldHost), s(FieldPath),
			s(FieldStatus), s(FieldBytes), s(FieldDuration), opt("secret", s(FieldSecret)))
	case StepStarted:
		return s(FieldStep)
	case StepFinished:
		return fmt.Sprintf("%s exit=%s %sms", s(FieldStep), s(FieldExit), s(FieldDuration))
	case JobFinished:
		return fmt.Sprintf("%s exit=%s %sms%s", s(FieldState), s(FieldExit), s(FieldDuration), opt("reason", s(FieldReason)))
	case RunnerCrashed:
		return fmt.Sprintf("%s%s", s(FieldReason), opt("truncated_bytes", s(FieldTruncatedBytes)))
	case Alert:
		return fmt.Sprintf("%s: %s", s(FieldKind), s(FieldMessage))
	case Seal:
		return fmt.Sprintf("%s records=%s tree=%s", s(FieldReason), s(FieldCount), s(FieldTreeHash))
	}
	keys := make([]string, 0, len(r.Fields))
	for k := range r.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + s(k)
	}
	return strings.Join(parts, " ")
}

func hostPort(host string, port int64) string {
	if port == 0 {
		return host
	}
	return net.JoinHostPort(host, strconv.FormatInt(port, 10))
}

// SuggestPolicy reads trails and returns the commands that would allow
// what they observed: per repository (from job_accepted; with --instance
// when the job came from a coordinator) one
// `airlock policy set --repo R --egress host:port,...` line covering every
// allowed and denied egress attempt, and one `airlock grant add SECRET
// --repo R --ref F [--protected-only] [--env E] --source S --deliver D` line
// per secret a grant decision denied (granted ones are noted in a comment).
// Names only seen in DNS questions are listed in a comment.
func SuggestPolicy(trails [][]Record) []string {
	type repoInfo struct {
		repo       string
		onInstance string // " --instance URL", or "" for local jobs
		on         string // " on URL", for comments
		egress     map[string]bool
		dnsOnly    map[string]bool
		grants     map[string]string // command -> ""; comment lines too
	}
	repos := map[string]*repoInfo{}
	for _, recs := range trails {
		var repo, ref, env, source, instance string
		protected := false
		secretHosts := map[string][]string{} // secret -> hosts it was used on (proxy)
		for _, r := range recs {
			switch r.Type {
			case JobAccepted:
				repo, ref, env, source = r.String(FieldRepo), r.String(FieldRef), r.String(FieldEnvironment), r.String(FieldSource)
				instance = r.String(FieldInstance)
				protected = r.Fields[FieldProtected] == true
			case CredentialUsed, ProxiedRequest:
				if sec, h := r.String(FieldSecret), r.String(FieldHost); sec != "" && h != "" && !slices.Contains(secretHosts[sec], h) {
					secretHosts[sec] = append(secretHosts[sec], h)
				}
			}
		}
		if repo == "" {
			repo = "UNKNOWN-REPO"
		}
		key := repo
		if instance != "" {
			key += " " + instance
		}
		ri := repos[key]
		if ri == nil {
			ri = &repoInfo{repo: repo, egress: map[string]bool{}, dnsOnly: map[string]bool{}, grants: map[string]string{}}
			if instance != "" {
				ri.onInstance, ri.on = " --instance "+shellQuote(instance), " on "+instance
			}
			repos[key] = ri
		}
		for _, r := range recs {
			switch r.Type {
			case EgressAllowed, EgressDenied:
				if h := r.String(FieldHost); h != "" {
					ri.egress[hostPort(h, r.Int(FieldPort))] = true
				}
			case DNSAnswered, DNSRefused:
				if h := r.String(FieldHost); h != "" {
					ri.dnsOnly[strings.TrimSuffix(h, ".")] = true
				}
			case GrantDecision:
				secret := r.String(FieldSecret)
				if r.String(FieldDecision) == DecisionGrant {
					ri.grants[fmt.Sprintf("# secret %s already granted (grant %s)", secret, r.String(FieldGrant))] = ""
					continue
				}
				line := fmt.Sprintf("airlock grant add %s --repo %s%s", shellQuote(secret), shellQuote(repo), ri.onInstance)
				if ref != "" {
					line += " --ref " + shellQuote(ref)
				}
				if protected {
					line += " --protected-only"
				}
				if env != "" {
					line += " --env " + shellQuote(env)
				}
				if source != "" {
					line += " --source " + shellQuote(source)
				}
				d := r.String(FieldDelivery)
				if d == "" {
					d = "env"
				}
				line += " --deliver " + shellQuote(d)
				hosts := slices.Clone(secretHosts[secret])
				slices.Sort(hosts)
				for _, h := range hosts {
					line += " --host " + shellQuote(h)
				}
				ri.grants[line] = ""
			}
		}
	}
	names := make([]string, 0, len(repos))
	for n := range repos {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []string
	for _, key := range names {
		ri := repos[key]
		var egress []string
		for hp := range ri.egress {
			egress = append(egress, hp)
			h, _, err := net.SplitHostPort(hp)
			if err != nil {
				h = hp
			}
			delete(ri.dnsOnly, h)
		}
		slices.Sort(egress)
		if len(egress) > 0 {
			out = append(out, fmt.Sprintf("airlock policy set --repo %s%s --egress %s", shellQuote(ri.repo), ri.onInstance, shellQuote(strings.Join(egress, ","))))
		}
		var dns []string
		for h := range ri.dnsOnly {
			dns = append(dns, h)
		}
		slices.Sort(dns)
		if len(dns) > 0 {
			out = append(out, fmt.Sprintf("# %s%s: names only looked up (no connection seen): %s", ri.repo, ri.on, strings.Join(dns, ",")))
		}
		var grants []string
		for g := range ri.grants {
			grants = append(grants, g)
		}
		slices.Sort(grants)
		out = append(out, grants...)
	}
	return out
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:,@=+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
