package audit

import (
	"slices"
	"testing"
	"time"
)

func recordsOf(evs ...Event) []Record {
	out := make([]Record, len(evs))
	for i, ev := range evs {
		f, _ := normalize(ev.Fields)
		out[i] = Record{Seq: int64(i + 1), Type: ev.Type, Fields: f}
	}
	return out
}

func TestSuggestPolicy(t *testing.T) {
	tests := []struct {
		name   string
		trails [][]Record
		want   []string
	}{
		{"egress and a denied grant", [][]Record{recordsOf(
			NewJobAccepted("gitlab", "", "acme/app", "main", "", true, "prod", "img"),
			NewEgress(KindTLS, "b.allowed.test", 443, VerdictAllowed, "", 1, time.Second),
			NewEgress(KindConnect, "a.denied.test", 8443, VerdictDenied, "not in policy", 0, 0),
			NewEgress(KindTLS, "b.allowed.test", 443, VerdictAllowed, "", 1, time.Second),
			NewGrantDecision("npm_token", "", DecisionDeny, "env", "no grant"),
		)}, []string{
			"airlock policy set --repo acme/app --egress a.denied.test:8443,b.allowed.test:443",
			"airlock grant add npm_token --repo acme/app --ref main --protected-only --env prod --source gitlab --deliver env",
		}},
		{"a coordinator's job: --instance on both lines, apart from the same path elsewhere", [][]Record{
			recordsOf(NewJobAccepted("gitlab", "https://gitlab.a.test", "acme/app", "main", "", false, "", "img"),
				NewEgress(KindTLS, "a.test", 443, VerdictAllowed, "", 1, 0),
				NewGrantDecision("tok", "", DecisionDeny, "env", "no grant")),
			recordsOf(NewJobAccepted("local", "", "acme/app", "main", "", false, "", "img"),
				NewEgress(KindTLS, "local.test", 443, VerdictAllowed, "", 1, 0)),
		}, []string{
			"airlock policy set --repo acme/app --egress local.test:443",
			"airlock policy set --repo acme/app --instance https://gitlab.a.test --egress a.test:443",
			"airlock grant add tok --repo acme/app --instance https://gitlab.a.test --ref main --source gitlab --deliver env",
		}},
		{"two trails of one repo merge, dns-only names commented", [][]Record{
			recordsOf(NewJobAccepted("local", "", "acme/lib", "dev", "", false, "", "img"),
				NewEgress(KindHTTP, "x.test", 80, VerdictAllowed, "", 1, 0)),
			recordsOf(NewJobAccepted("local", "", "acme/lib", "dev", "", false, "", "img"),
				NewDNS("y.test.", "A", VerdictDenied, "not allowed"),
				NewDNS("x.test", "A", VerdictAllowed, ""),
				NewGrantDecision("tok", "g1", DecisionGrant, "proxy", "")),
		}, []string{
			"airlock policy set --repo acme/lib --egress x.test:80",
			"# acme/lib: names only looked up (no connection seen): y.test",
			"# secret tok already granted (grant g1)",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := SuggestPolicy(tc.trails); !slices.Equal(got, tc.want) {
				t.Errorf("SuggestPolicy() =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
