package secrets

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

// KindClientCert is the Params["kind"] of a secret holding a client
// certificate and its private key (PEM, leaf first, then any chain, then
// the key), for mtls delivery.
const KindClientCert = "client-certificate"

// ParseClientCert parses and checks a client-certificate secret's value:
// the key matches the leaf, the leaf is valid at now and usable for client
// authentication, and each chain certificate signed the one before it.
// Errors never contain key material.
func ParseClientCert(bundle []byte, now time.Time) (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(bundle, bundle)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing client certificate: the PEM must hold the certificate(s) and their private key, and the key must match the certificate: %w", errors.Unwrap(err))
	}
	chain := make([]*x509.Certificate, len(cert.Certificate))
	for i, der := range cert.Certificate {
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return tls.Certificate{}, fmt.Errorf("parsing client certificate %d of the chain: %w", i, err)
		}
	}
	leaf := chain[0]
	switch {
	case now.Before(leaf.NotBefore):
		return tls.Certificate{}, fmt.Errorf("client certificate %q is not valid before %s", leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		return tls.Certificate{}, fmt.Errorf("client certificate %q expired on %s", leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	case len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny):
		return tls.Certificate{}, fmt.Errorf("client certificate %q is not for client authentication (extended key usage)", leaf.Subject.CommonName)
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return tls.Certificate{}, fmt.Errorf("client certificate chain: certificate %d (%q) is not signed by the next one (%q): %w",
				i, chain[i].Subject.CommonName, chain[i+1].Subject.CommonName, err)
		}
	}
	cert.Leaf = leaf
	return cert, nil
}
