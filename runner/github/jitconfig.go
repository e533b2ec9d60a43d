package github

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// MinKeyBits is the smallest runner key GitHub's runner accepts for signing.
const MinKeyBits = 2048

// Registration is a runner's identity: what the official runner keeps in
// .runner, .credentials and .credentials_rsaparams. It holds the runner's
// private key: it lives on the host only (in memory, or sealed in the state
// store) and never reaches a job.
type Registration struct {
	AgentID     int64  `json:"agent_id"`
	AgentName   string `json:"agent_name"`
	PoolID      int64  `json:"pool_id,omitempty"`
	GitHubURL   string `json:"github_url"`    // https://github.com/owner[/repo]
	ServerURL   string `json:"server_url"`    // pipelines tenant URL (older flow), ends with '/'
	ServerURLV2 string `json:"server_url_v2"` // broker URL, ends with '/'
	UseV2Flow   bool   `json:"use_v2_flow"`
	Ephemeral   bool   `json:"ephemeral"`

	ClientID         string `json:"client_id"`
	AuthorizationURL string `json:"authorization_url"`
	// RequireFIPS selects PS256 client assertions (RS256 otherwise).
	RequireFIPS bool `json:"require_fips"`

	Key *rsa.PrivateKey `json:"-"`
}

// flexString is a JSON scalar read as a string: "23", 23 and true all work.
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		*f = ""
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
		return nil
	}
	if len(b) > 0 && (b[0] == '{' || b[0] == '[') {
		return fmt.Errorf("want a scalar, got %s", b)
	}
	*f = flexString(b)
	return nil
}

func (f flexString) int64(field string) (int64, error) {
	s := strings.TrimSpace(string(f))
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s %q: not an integer", field, s)
	}
	return n, nil
}

func (f flexString) bool(field string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(string(f))) {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	}
	return false, fmt.Errorf("%s %q: not a boolean", field, string(f))
}

// runnerFile is .runner; every scalar may come as a string or not.
type runnerFile struct {
	AgentID     flexString `json:"AgentId"`
	AgentName   flexString `json:"AgentName"`
	PoolID      flexString `json:"PoolId"`
	ServerURL   flexString `json:"ServerUrl"`
	ServerURLV2 flexString `json:"ServerUrlV2"`
	GitHubURL   flexString `json:"GitHubUrl"`
	UseV2Flow   flexString `json:"UseV2Flow"`
	Ephemeral   flexString `json:"Ephemeral"`
}

type credentialsFile struct {
	Scheme flexString `json:"Scheme"`
	Data   struct {
		ClientID                flexString `json:"clientId"`
		AuthorizationURL        flexString `json:"authorizationUrl"`
		RequireFipsCryptography flexString `json:"requireFipsCryptography"`
	} `json:"Data"`
}

// rsaParams is .NET's RSAParameters: big-endian unsigned bytes, base64.
type rsaParams struct {
	D        []byte `json:"d"`
	DP       []byte `json:"dp"`
	DQ       []byte `json:"dq"`
	Exponent []byte `json:"exponent"`
	InverseQ []byte `json:"inverseQ"`
	Modulus  []byte `json:"modulus"`
	P        []byte `json:"p"`
	Q        []byte `json:"q"`
}

// ParseJITConfig decodes an encoded_jit_config: base64 of a JSON object
// mapping file names to base64 file contents. The RSA key is rebuilt and
// validated. Errors never quote the config (it is the runner's identity).
func ParseJITConfig(encoded string) (*Registration, error) {
	raw, err := decodeBase64(strings.TrimSpace(encoded))
	if err != nil {
		return nil, errors.New("decoding JIT config: not base64")
	}
	var files map[string]string
	if err := json.Unmarshal(raw, &files); err != nil {
		return nil, errors.New("decoding JIT config: not a JSON object of files")
	}
	file := func(name string) ([]byte, error) {
		for k, v := range files {
			if strings.EqualFold(k, name) {
				b, err := decodeBase64(v)
				if err != nil {
					return nil, fmt.Errorf("decoding JIT config: file %s is not base64", name)
				}
				return bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")), nil
			}
		}
		return nil, fmt.Errorf("decoding JIT config: file %s is missing", name)
	}
	rb, err := file(".runner")
	if err != nil {
		return nil, err
	}
	cb, err := file(".credentials")
	if err != nil {
		return nil, err
	}
	kb, err := file(".credentials_rsaparams")
	if err != nil {
		return nil, err
	}
	reg, err := parseRunnerFiles(rb, cb)
	if err != nil {
		return nil, err
	}
	var p rsaParams
	if err := json.Unmarshal(kb, &p); err != nil {
		return nil, errors.New("decoding JIT config: .credentials_rsaparams is not RSA parameters")
	}
	if reg.Key, err = p.key(); err != nil {
		return nil, fmt.Errorf("decoding JIT config: .credentials_rsaparams: %w", err)
	}
	// --jitconfig implies an ephemeral runner, whatever .runner says.
	reg.Ephemeral = true
	return reg, reg.Validate()
}

func parseRunnerFiles(rb, cb []byte) (*Registration, error) {
	var rf runnerFile
	if err := json.Unmarshal(rb, &rf); err != nil {
		return nil, fmt.Errorf("decoding .runner: %w", err)
	}
	var cf credentialsFile
	if err := json.Unmarshal(cb, &cf); err != nil {
		return nil, fmt.Errorf("decoding .credentials: %w", err)
	}
	if s := string(cf.Scheme); s != "" && !strings.EqualFold(s, "OAuth") {
		return nil, fmt.Errorf("decoding .credentials: scheme %q: only OAuth is supported", s)
	}
	reg := &Registration{
		AgentName:        string(rf.AgentName),
		ServerURL:        string(rf.ServerURL),
		ServerURLV2:      string(rf.ServerURLV2),
		GitHubURL:        string(rf.GitHubURL),
		ClientID:         string(cf.Data.ClientID),
		AuthorizationURL: string(cf.Data.AuthorizationURL),
	}
	var errs []error
	var err error
	if reg.AgentID, err = rf.AgentID.int64("AgentId"); err != nil {
		errs = append(errs, err)
	}
	if reg.PoolID, err = rf.PoolID.int64("PoolId"); err != nil {
		errs = append(errs, err)
	}
	if reg.UseV2Flow, err = rf.UseV2Flow.bool("UseV2Flow"); err != nil {
		errs = append(errs, err)
	}
	if reg.Ephemeral, err = rf.Ephemeral.bool("Ephemeral"); err != nil {
		errs = append(errs, err)
	}
	// The runner's default when the key is absent is True.
	if cf.Data.RequireFipsCryptography == "" {
		reg.RequireFIPS = true
	} else if reg.RequireFIPS, err = cf.Data.RequireFipsCryptography.bool("requireFipsCryptography"); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("decoding runner settings: %w", err)
	}
	return reg, nil
}

func (p rsaParams) key() (*rsa.PrivateKey, error) {
	if len(p.Modulus) == 0 || len(p.Exponent) == 0 || len(p.D) == 0 || len(p.P) == 0 || len(p.Q) == 0 {
		return nil, errors.New("modulus, exponent, d, p and q are required")
	}
	e := new(big.Int).SetBytes(p.Exponent)
	if !e.IsInt64() || e.Int64() > 1<<31-1 || e.Int64() < 3 {
		return nil, errors.New("exponent out of range")
	}
	k := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: new(big.Int).SetBytes(p.Modulus), E: int(e.Int64())},
		D:         new(big.Int).SetBytes(p.D),
		Primes:    []*big.Int{new(big.Int).SetBytes(p.P), new(big.Int).SetBytes(p.Q)},
	}
	if err := k.Validate(); err != nil {
		return nil, fmt.Errorf("invalid RSA key: %w", err)
	}
	k.Precompute()
	if len(p.DP) > 0 && new(big.Int).SetBytes(p.DP).Cmp(k.Precomputed.Dp) != 0 {
		return nil, errors.New("invalid RSA key: dp does not match")
	}
	if len(p.DQ) > 0 && new(big.Int).SetBytes(p.DQ).Cmp(k.Precomputed.Dq) != 0 {
		return nil, errors.New("invalid RSA key: dq does not match")
	}
	if len(p.InverseQ) > 0 && new(big.Int).SetBytes(p.InverseQ).Cmp(k.Precomputed.Qinv) != 0 {
		return nil, errors.New("invalid RSA key: inverseQ does not match")
	}
	if k.N.BitLen() < MinKeyBits {
		return nil, fmt.Errorf("RSA key of %d bits: at least %d are required", k.N.BitLen(), MinKeyBits)
	}
	return k, nil
}

// RSAParamsJSON encodes k as .credentials_rsaparams (for fakes and tests
// that build JIT configs).
func RSAParamsJSON(k *rsa.PrivateKey) []byte {
	k.Precompute()
	b, _ := json.Marshal(rsaParams{
		D: k.D.Bytes(), DP: k.Precomputed.Dp.Bytes(), DQ: k.Precomputed.Dq.Bytes(),
		Exponent: big.NewInt(int64(k.E)).Bytes(), InverseQ: k.Precomputed.Qinv.Bytes(),
		Modulus: k.N.Bytes(), P: k.Primes[0].Bytes(), Q: k.Primes[1].Bytes(),
	})
	return b
}

func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// Validate checks that the registration can talk to GitHub.
func (r *Registration) Validate() error {
	var errs []error
	if r.ClientID == "" {
		errs = append(errs, errors.New("client id is missing"))
	}
	if r.AuthorizationURL == "" {
		errs = append(errs, errors.New("authorization URL is missing"))
	}
	if r.ServerURLV2 == "" && r.ServerURL == "" {
		errs = append(errs, errors.New("neither a broker nor a pipelines URL is set"))
	}
	if r.Key == nil {
		errs = append(errs, errors.New("RSA key is missing"))
	} else if r.Key.N.BitLen() < MinKeyBits {
		errs = append(errs, fmt.Errorf("RSA key of %d bits: at least %d are required", r.Key.N.BitLen(), MinKeyBits))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("checking runner registration: %w", err)
	}
	return nil
}

// sealedRegistration is a Registration as it is kept (sealed) in the
// state store: the key as PKCS#1 DER.
type sealedRegistration struct {
	Registration
	KeyDER []byte `json:"key"`
}

// MarshalSecret encodes the registration with its private key, for the
// encrypted state store only.
func (r *Registration) MarshalSecret() ([]byte, error) {
	if r.Key == nil {
		return nil, errors.New("encoding runner registration: RSA key is missing")
	}
	return json.Marshal(sealedRegistration{Registration: *r, KeyDER: x509.MarshalPKCS1PrivateKey(r.Key)})
}

// UnmarshalRegistration decodes what MarshalSecret wrote.
func UnmarshalRegistration(b []byte) (*Registration, error) {
	var s sealedRegistration
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding runner registration: %w", err)
	}
	k, err := x509.ParsePKCS1PrivateKey(s.KeyDER)
	if err != nil {
		return nil, errors.New("decoding runner registration: unreadable RSA key")
	}
	r := s.Registration
	r.Key = k
	return &r, r.Validate()
}

// CredentialName is the state-store name of a [[github]] entry's
// registration.
func CredentialName(name string) string { return "github:" + name }
