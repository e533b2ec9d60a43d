package hostcheck

import (
	"context"
	"errors"
	"testing"
)

func TestCheckFirewall(t *testing.T) {
	const table = "table inet airlock {\n\tmap jobs {\n\t}\n\tchain input {\n\t}\n\tchain forward {\n\t}\n" +
		"\tchain AIRLOCK-1a2b3-0011aabb {\n\t}\n\tchain AIRLOCK-1a2b3-2233ccdd {\n\t}\n}\n"
	nftOK := map[string]fakeOut{
		"iptables --version":             {out: "iptables v1.8.9 (nf_tables)\n"},
		"iptables -w -t filter -S INPUT": {out: "-P INPUT ACCEPT\n-A INPUT -j DOCKER-USER\n"},
		"nft list tables inet":           {out: "table inet filter\ntable inet airlock\n"},
		"nft list table inet airlock":    {out: table},
	}
	with := func(base map[string]fakeOut, k string, v fakeOut) map[string]fakeOut {
		m := map[string]fakeOut{}
		for a, b := range base {
			m[a] = b
		}
		m[k] = v
		return m
	}
	tests := []struct {
		name        string
		mode        string
		nft         bool
		outs        map[string]fakeOut
		status      Status
		detail, fix string
	}{
		{"auto picks nftables and counts job chains", "auto", true, nftOK, OK,
			"nftables (iptables is nf_tables-based and INPUT accepts); table inet airlock holds 2 job chains", ""},
		{"table not made yet", "", true, with(nftOK, "nft list tables inet", fakeOut{out: "table inet filter\n"}), OK,
			"table inet airlock not made yet", ""},
		{"INPUT drops: iptables", "auto", true, with(nftOK, "iptables -w -t filter -S INPUT", fakeOut{out: "-P INPUT DROP\n"}), OK,
			"iptables (the host's INPUT policy is DROP)", ""},
		{"legacy iptables", "auto", true, with(nftOK, "iptables --version", fakeOut{out: "iptables v1.8.9 (legacy)\n"}), OK,
			`iptables (iptables backend is "legacy")`, ""},
		{"iptables does not run", "auto", true, with(nftOK, "iptables --version", fakeOut{err: errors.New("exec: iptables: not found")}), OK,
			"iptables (iptables backend unknown: exec: iptables: not found)", ""},
		{"nf_tables does not answer", "nftables", true, with(nftOK, "nft list tables inet", fakeOut{err: errors.New("Operation not supported")}), Fail,
			"nf_tables does not answer: Operation not supported", "modprobe nf_tables"},
		{"no nft binary", "nftables", false, nftOK, OK, "nft is not installed", ""},
		{"bad mode", "pf", true, nftOK, Fail, `firewall mode "pf"`, `set [network] firewall`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := &fakeCmd{paths: map[string]bool{"nft": tc.nft}, outs: tc.outs}
			wantResult(t, checkFirewall(context.Background(), fakeEnv(t, cmd), tc.mode), tc.status, tc.detail, tc.fix)
		})
	}
}
