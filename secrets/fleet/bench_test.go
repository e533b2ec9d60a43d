package fleet_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/internal/testenv/fakevault"
	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/fleet"
	"github.com/airlock-ci/airlock/secrets/vault"
)

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

// BenchmarkGrantPropagation: a grant change made on host a, until it is
// in force (in the snapshot) on every one of three hosts.
func BenchmarkGrantPropagation(b *testing.B) {
	f := newFleet(b)
	a, h2, h3 := f.host("a", nil), f.host("b", nil), f.host("c", nil)
	addSecret(b, a, "s")
	ctx := context.Background()
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		g, err := a.st.AddGrant(secrets.Grant{ID: fmt.Sprintf("p%06d", i), Secret: "s", Repo: "acme/*", Delivery: job.DeliverEnv})
		if err != nil {
			b.Fatal(err)
		}
		rev := a.fs.Revision()
		for _, h := range []*host{h2, h3} {
			if err := h.fs.WaitRevision(ctx, rev); err != nil {
				b.Fatal(err)
			}
		}
		lat = append(lat, time.Since(start))
		_ = g
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.95).Microseconds())/1000, "p95-ms")
}

// BenchmarkJobStartEtcdVsLocal: a job's credential preparation and
// release (builtin secret) with the fleet store against state.db alone,
// measured in the same run; reports the ratio.
func BenchmarkJobStartEtcdVsLocal(b *testing.B) {
	f := newFleet(b)
	fl := f.host("fleet", nil)
	addSecret(b, fl, "s")
	if _, err := fl.st.AddGrant(secrets.Grant{Secret: "s", Repo: "acme/*", Delivery: job.DeliverEnv}); err != nil {
		b.Fatal(err)
	}
	local, err := secrets.Open(b.TempDir()+"/local", secrets.OpenOptions{Shared: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := local.PutSecret(secrets.Secret{Name: "s", Backend: secrets.BackendBuiltin, Value: []byte("local-secret-value")}); err != nil {
		b.Fatal(err)
	}
	if _, err := local.AddGrant(secrets.Grant{Secret: "s", Repo: "acme/*", Delivery: job.DeliverEnv}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	run := func(st *secrets.Store, n int, tag string) time.Duration {
		br, err := secrets.NewBroker(secrets.BrokerOptions{Store: st})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for i := range n {
			id := secrets.JobIdentity{JobID: fmt.Sprintf("%s-%d-%d", tag, b.N, i), Repo: "acme/app", Ref: "main", Source: job.SourceLocal}
			creds, err := br.Prepare(ctx, id, []job.SecretRequest{{Name: "s"}})
			if err != nil {
				b.Fatal(err)
			}
			creds.Wipe()
			if err := br.Release(ctx, id.JobID); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(n)
	}
	b.ResetTimer()
	l := run(local, b.N, "local")
	e := run(fl.st, b.N, "etcd")
	b.StopTimer()
	b.ReportMetric(float64(l.Microseconds())/1000, "local-ms/job")
	b.ReportMetric(float64(e.Microseconds())/1000, "etcd-ms/job")
	b.ReportMetric(float64(e)/float64(l), "etcd/local")
}

// BenchmarkPeerRevocation: from a host's death (it stops renewing its
// lease) until a peer has revoked its Vault child token; the heartbeat
// is 1s, so the figure is about heartbeat + revocation.
func BenchmarkPeerRevocation(b *testing.B) {
	f := newFleet(b)
	fv := fakevault.New(b)
	beat := func(c *fleet.Config) { c.Heartbeat = time.Second }
	peer := f.host("peer", beat)
	if err := peer.st.PutSecret(secrets.Secret{Name: "vt", Backend: secrets.BackendVault, Value: []byte(fv.RootToken),
		Params: map[string]string{vault.ParamAddress: fv.URL}}); err != nil {
		b.Fatal(err)
	}
	if _, err := peer.st.AddGrant(secrets.Grant{Secret: "vt", Repo: "acme/*", Delivery: job.DeliverEnv,
		Scope: map[string]string{vault.ScopePolicies: "default"}}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pbr, err := secrets.NewBroker(secrets.BrokerOptions{Store: peer.st, Backends: map[string]secrets.Backend{secrets.BackendVault: vault.New(0)}})
	if err != nil {
		b.Fatal(err)
	}
	pp, err := peer.fs.StartPeers(ctx, func(ctx context.Context, dead string, l secrets.MirroredLease) error {
		return pbr.RevokePeer(ctx, dead, l, nil)
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = pp.Stop() })
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		h := f.host(fmt.Sprintf("victim%d", i), beat)
		br, err := secrets.NewBroker(secrets.BrokerOptions{Store: h.st, Backends: map[string]secrets.Backend{secrets.BackendVault: vault.New(0)}})
		if err != nil {
			b.Fatal(err)
		}
		p, err := h.fs.StartPeers(ctx, func(context.Context, string, secrets.MirroredLease) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
		id := secrets.JobIdentity{JobID: fmt.Sprintf("job-%d", i), Repo: "acme/app", Ref: "main", Source: job.SourceLocal}
		if _, err := br.Prepare(ctx, id, []job.SecretRequest{{Name: "vt"}}); err != nil {
			b.Fatal(err)
		}
		live := len(fv.LiveChildTokens())
		b.StartTimer()
		start := time.Now()
		p.Abandon()
		if err := h.fs.Close(); err != nil {
			b.Fatal(err)
		}
		for len(fv.LiveChildTokens()) >= live {
			time.Sleep(5 * time.Millisecond)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-revoke")
}
