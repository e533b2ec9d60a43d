package secrets_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/airlock-ci/airlock/secrets"
)

func mintCert(t *testing.T, cn string, notAfter time.Time, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, ca bool) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter, IsCA: ca, BasicConstraintsValid: ca,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	if !ca {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

func TestParseClientCert(t *testing.T) {
	later := time.Now().Add(time.Hour)
	ica, icaKey, icaPEM, _ := mintCert(t, "intermediate", later, nil, nil, true)
	_, _, leafPEM, leafKey := mintCert(t, "client", later, ica, icaKey, false)
	_, _, _, otherKey := mintCert(t, "other", later, nil, nil, false)
	_, _, oldPEM, oldKey := mintCert(t, "old", time.Now().Add(-time.Hour), ica, icaKey, false)
	_, _, strangerPEM, _ := mintCert(t, "stranger", later, nil, nil, true)
	join := func(bs ...[]byte) []byte {
		return []byte(strings.Join(func() []string {
			s := []string{}
			for _, b := range bs {
				s = append(s, string(b))
			}
			return s
		}(), ""))
	}
	for _, tc := range []struct {
		name, want string
		bundle     []byte
	}{
		{"valid with chain", "", join(leafPEM, icaPEM, leafKey)},
		{"valid leaf only", "", join(leafPEM, leafKey)},
		{"key does not match", "key must match", join(leafPEM, otherKey)},
		{"expired", "expired", join(oldPEM, oldKey)},
		{"chain does not sign", "not signed by the next one", join(leafPEM, strangerPEM, leafKey)},
		{"no key", "private key", join(leafPEM)},
	} {
		_, err := secrets.ParseClientCert(tc.bundle, time.Now())
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want it to say %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY-----\n") {
			t.Errorf("%s: the error shows key material", tc.name)
		}
	}
}
