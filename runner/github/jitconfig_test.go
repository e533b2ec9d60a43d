package github

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/internal/testenv/fakegithub"
)

func encodeFiles(t *testing.T, runner, creds string, params []byte) string {
	t.Helper()
	files, _ := json.Marshal(map[string]string{
		".runner":                base64.StdEncoding.EncodeToString([]byte(runner)),
		".credentials":           base64.StdEncoding.EncodeToString([]byte(creds)),
		".credentials_rsaparams": base64.StdEncoding.EncodeToString(params),
	})
	return base64.StdEncoding.EncodeToString(files)
}

func TestParseJITConfigLenientScalars(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	params := RSAParamsJSON(key)
	tests := []struct {
		name, runner, creds string
		wantID              int64
		wantFIPS, wantV2    bool
		wantErr             string
	}{
		{name: "strings as GitHub sends them",
			runner: `{"AgentId":"23","AgentName":"a","PoolId":"1","ServerUrlV2":"https://b/","UseV2Flow":"True","Ephemeral":"True"}`,
			creds:  `{"Scheme":"OAuth","Data":{"clientId":"c","authorizationUrl":"https://t/","requireFipsCryptography":"True"}}`,
			wantID: 23, wantFIPS: true, wantV2: true},
		{name: "numbers and booleans",
			runner: `{"AgentId":24,"AgentName":"a","PoolId":1,"ServerUrlV2":"https://b/","UseV2Flow":true,"Ephemeral":false}`,
			creds:  `{"Scheme":"OAuth","Data":{"clientId":"c","authorizationUrl":"https://t/","requireFipsCryptography":false}}`,
			wantID: 24, wantFIPS: false, wantV2: true},
		{name: "fips defaults to true",
			runner: `{"AgentId":"25","ServerUrl":"https://p/"}`,
			creds:  `{"Scheme":"OAuth","Data":{"clientId":"c","authorizationUrl":"https://t/"}}`,
			wantID: 25, wantFIPS: true},
		{name: "bad id", runner: `{"AgentId":"x","ServerUrl":"https://p/"}`,
			creds: `{"Data":{"clientId":"c","authorizationUrl":"https://t/"}}`, wantErr: "AgentId"},
		{name: "bad bool", runner: `{"AgentId":"1","UseV2Flow":"maybe","ServerUrl":"https://p/"}`,
			creds: `{"Data":{"clientId":"c","authorizationUrl":"https://t/"}}`, wantErr: "UseV2Flow"},
		{name: "no client id", runner: `{"AgentId":"1","ServerUrl":"https://p/"}`,
			creds: `{"Data":{"authorizationUrl":"https://t/"}}`, wantErr: "client id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg, err := ParseJITConfig(encodeFiles(t, tc.runner, tc.creds, params))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseJITConfig error = %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if reg.AgentID != tc.wantID || reg.RequireFIPS != tc.wantFIPS || reg.UseV2Flow != tc.wantV2 || !reg.Ephemeral {
				t.Errorf("got id %d fips %v v2 %v ephemeral %v, want %d %v %v true", reg.AgentID, reg.RequireFIPS, reg.UseV2Flow, reg.Ephemeral, tc.wantID, tc.wantFIPS, tc.wantV2)
			}
			if reg.Key.N.Cmp(key.N) != 0 || reg.Key.D.Cmp(key.D) != 0 {
				t.Error("rebuilt key differs from the original")
			}
		})
	}
}

func TestParseJITConfigRejectsBadKeys(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	var p rsaParams
	_ = json.Unmarshal(RSAParamsJSON(key), &p)
	p.Q = other.Primes[1].Bytes() // primes that do not make the modulus
	mixed, _ := json.Marshal(p)
	runner := `{"AgentId":"1","ServerUrlV2":"https://b/","UseV2Flow":"True"}`
	creds := `{"Data":{"clientId":"c","authorizationUrl":"https://t/"}}`
	for name, params := range map[string][]byte{"1024 bits": RSAParamsJSON(small), "mismatched primes": mixed, "not json": []byte("nope")} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseJITConfig(encodeFiles(t, runner, creds, params)); err == nil {
				t.Fatal("ParseJITConfig accepted a bad key")
			}
		})
	}
	if _, err := ParseJITConfig("not base64 at all!"); err == nil || strings.Contains(err.Error(), "not base64 at all") {
		t.Errorf("ParseJITConfig(garbage) = %v, want an error that does not quote the input", err)
	}
}

func TestParseJITConfigFromFake(t *testing.T) {
	f := fakegithub.NewRunners(t)
	enc, id := f.JITConfig("jit-1", "airlock")
	reg, err := ParseJITConfig(enc)
	if err != nil {
		t.Fatal(err)
	}
	if reg.AgentID != id || reg.AgentName != "jit-1" || !reg.UseV2Flow || !strings.HasSuffix(reg.ServerURLV2, "/broker/") {
		t.Errorf("registration = %+v", reg)
	}
	// What is sealed in the store comes back whole.
	b, err := reg.MarshalSecret()
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalRegistration(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Key.D.Cmp(reg.Key.D) != 0 || back.ClientID != reg.ClientID || back.AgentID != reg.AgentID {
		t.Error("registration did not survive MarshalSecret/UnmarshalRegistration")
	}
}

func FuzzParseJITConfig(f *testing.F) {
	f.Add("e30=")
	f.Add(base64.StdEncoding.EncodeToString([]byte(`{".runner":"e30=",".credentials":"e30=",".credentials_rsaparams":"e30="}`)))
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseJITConfig(s)
	})
}
