package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/airlock-ci/airlock/internal/atomicfile"
)

// KeyName is the signer name written into the key file when a key is
// created, and so into every checkpoint signature line.
const KeyName = "airlock"

// KeyFile is the key's file name inside the state directory.
const KeyFile = "audit.key"

// Key is the runner's Ed25519 signing key. The file holds it in the
// sumdb/note signer-key format ("PRIVATE+KEY+<name>+<hash>+<base64>").
type Key struct {
	signer note.Signer
	pub    ed25519.PublicKey
}

// LoadOrCreateKey reads the key at path, creating it (mode 0600, parent
// directory 0700) when it does not exist. A key file readable or writable
// by anyone but its owner is refused.
func LoadOrCreateKey(path string) (*Key, error) {
	k, err := LoadKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating audit key directory: %w", err)
	}
	skey, _, err := note.GenerateKey(rand.Reader, KeyName)
	if err != nil {
		return nil, fmt.Errorf("generating audit key: %w", err)
	}
	err = atomicfile.CreateOnce(path, []byte(skey+"\n"), 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadKey(path) // lost a race with another creator
	}
	if err != nil {
		return nil, fmt.Errorf("creating audit key: %w", err)
	}
	return parseKey(skey)
}

// LoadKey reads an existing key file, refusing one with a mode wider than 0600.
func LoadKey(path string) (*Key, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading audit key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("reading audit key %s: mode %04o is too open, want 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading audit key: %w", err)
	}
	k, err := parseKey(string(bytes.TrimSpace(b)))
	if err != nil {
		return nil, fmt.Errorf("reading audit key %s: %w", path, err)
	}
	return k, nil
}

func parseKey(skey string) (*Key, error) {
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("parsing signer key: %w", err)
	}
	parts := strings.SplitN(skey, "+", 5) // PRIVATE+KEY+name+hash+base64
	raw, err := base64.StdEncoding.DecodeString(parts[len(parts)-1])
	if err != nil || len(raw) != 1+ed25519.SeedSize {
		return nil, errors.New("parsing signer key: not an Ed25519 key")
	}
	priv := ed25519.NewKeyFromSeed(raw[1:])
	return &Key{signer: s, pub: priv.Public().(ed25519.PublicKey)}, nil
}

// Name returns the signer name.
func (k *Key) Name() string { return k.signer.Name() }

// Public returns the Ed25519 public key.
func (k *Key) Public() ed25519.PublicKey { return k.pub }

// VerifierKey returns the public key in the sumdb/note verifier-key format
// ("<name>+<hash>+<base64>"), which ParsePublicKey accepts.
func (k *Key) VerifierKey() string {
	v, _ := note.NewEd25519VerifierKey(k.Name(), k.pub) // size is right by construction
	return v
}

// ParsePublicKey accepts a note verifier key ("name+hash+base64"), the
// base64 of a raw 32-byte Ed25519 public key, or the path of a file holding
// either (or holding the private key file itself).
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if pub, err := parsePublicKeyString(s); err == nil {
		return pub, nil
	}
	b, err := os.ReadFile(s)
	if err != nil {
		return nil, fmt.Errorf("parsing public key: neither a key nor a readable file: %w", err)
	}
	text := strings.TrimSpace(string(b))
	if strings.HasPrefix(text, "PRIVATE+KEY+") {
		k, err := LoadKey(s)
		if err != nil {
			return nil, err
		}
		return k.Public(), nil
	}
	pub, err := parsePublicKeyString(text)
	if err != nil {
		return nil, fmt.Errorf("parsing public key in %s: %w", s, err)
	}
	return pub, nil
}

func parsePublicKeyString(s string) (ed25519.PublicKey, error) {
	if _, err := note.NewVerifier(s); err == nil {
		parts := strings.SplitN(s, "+", 3) // name+hash+base64
		raw, err := base64.StdEncoding.DecodeString(parts[len(parts)-1])
		if err == nil && len(raw) == 1+ed25519.PublicKeySize && raw[0] == 1 {
			return ed25519.PublicKey(raw[1:]), nil
		}
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("not a verifier key or base64 Ed25519 public key")
	}
	return ed25519.PublicKey(raw), nil
}

func syncDir(dir string) error {
	return atomicfile.SyncDir(dir)
}
