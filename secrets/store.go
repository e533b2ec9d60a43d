package secrets

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/airlock-ci/airlock/internal/atomicfile"
)

// SchemaVersion is the state.db schema this code reads and writes.
const SchemaVersion = 1

// File names inside the state directory.
const (
	DBFile  = "state.db"
	KeyFile = "state.key"
)

var (
	bucketMeta     = []byte("meta")
	bucketSecrets  = []byte("secrets")
	bucketGrants   = []byte("grants")
	bucketPolicies = []byte("policies")
	bucketJournal  = []byte("journal")
	bucketJobs     = []byte("jobs")
	allBuckets     = [][]byte{bucketMeta, bucketSecrets, bucketGrants, bucketPolicies, bucketJournal, bucketJobs}

	keySchema   = []byte("schema")
	keyKeyCheck = []byte("keycheck")
)

// ErrNotFound is returned (wrapped) for a missing secret, grant or policy.
var ErrNotFound = errors.New("not found")

// ErrInUse is returned when another process holds state.db.
var ErrInUse = errors.New("state.db is in use by another airlock process")

// Store is the state store: one bbolt file and its key. Safe for
// concurrent use; bbolt allows one process at a time.
type Store struct {
	dir   string
	aead  cipherAEAD
	fpKey []byte

	// Shared mode: db is nil and every operation opens and closes the file,
	// so that other processes (the CLI) can use it in between.
	shared      bool
	path        string
	lockTimeout time.Duration
	mu          sync.Mutex // shared mode: one operation at a time
	db          *bolt.DB

	// Fleet mode (UseRemote): secrets, grants and policies live on
	// remote; the journal is mirrored for peers.
	remote Remote
	mirror JournalMirror
}

// openDB opens the bbolt file, mapping a lock timeout to ErrInUse. The
// file is checked first (see precheck) and opened under guard, so that a
// damaged file is an error naming it rather than a fault or a panic.
// create lets bbolt create a missing file (or initialise an empty one).
func openDB(path string, timeout time.Duration, create bool) (*bolt.DB, error) {
	if err := precheck(path); err != nil {
		switch {
		case create && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrEmptyDB)):
		case errors.Is(err, ErrEmptyDB):
			return nil, emptyDBError(path)
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("opening state store: %s has disappeared; restore it from a backup or restart airlock: %w", path, err)
		default:
			return nil, err
		}
	}
	var db *bolt.DB
	err := guard(path, func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
		return err
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("opening %s: %w", path, ErrInUse)
		}
		if errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		return nil, fmt.Errorf("opening %s (corrupt or not a state database; restore it from a backup or move it away): %w", path, err)
	}
	return db, nil
}

// withDB runs fn on the open database (shared mode: opened for fn), with
// panics and faults inside bbolt turned into corrupt-store errors.
func (s *Store) withDB(fn func(*bolt.DB) error) error {
	if !s.shared {
		return guard(s.path, func() error { return fn(s.db) })
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	db, err := openDB(s.path, s.lockTimeout, false)
	if err != nil {
		return err
	}
	ferr := guard(s.path, func() error { return fn(db) })
	return errors.Join(ferr, guard(s.path, db.Close))
}

// view runs a read-only transaction.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	return s.withDB(func(db *bolt.DB) error { return db.View(fn) })
}

// update runs a read-write transaction, fsynced when it returns nil.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	return s.withDB(func(db *bolt.DB) error { return db.Update(fn) })
}

type cipherAEAD interface {
	NonceSize() int
	Overhead() int
	Seal(dst, nonce, plaintext, additionalData []byte) []byte
	Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
}

// OpenOptions tune Open.
type OpenOptions struct {
	// LockTimeout is how long to wait for another process's lock on
	// state.db before failing with ErrInUse. Default 1s.
	LockTimeout time.Duration
	// Shared keeps state.db closed between operations so that other
	// airlock processes (an admin's `airlock grant add` while the agent
	// runs) can use it; each operation then waits up to LockTimeout.
	Shared bool
	// MustExist refuses to create a state directory or database that is
	// not there (for commands that only read or remove).
	MustExist bool
}

// Open opens (creating if needed) the store in dir. It refuses a state
// directory writable by group or others, a key file readable by anyone
// but its owner, a key that does not match the database, a missing key
// while the database holds encrypted records, a corrupt database and a
// newer schema; each refusal leaves every file as it was.
func Open(dir string, opts OpenOptions) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.MustExist {
		if _, err := os.Stat(filepath.Join(dir, DBFile)); err != nil {
			return nil, fmt.Errorf("opening state store: no %s in %s (wrong --state-dir, or nothing stored yet): %w", DBFile, dir, err)
		}
	}
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, KeyFile)
	key, err := readKey(keyPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	haveKey := err == nil
	dbPath := filepath.Join(dir, DBFile)
	fi, statErr := os.Stat(dbPath)
	dbExisted := statErr == nil
	if dbExisted && fi.Size() == 0 && haveKey {
		// A store was made here (its key is there) and its file lost
		// its contents: re-creating it would drop every secret, grant
		// and revocation without a word. An empty file without a key is
		// a first start that stopped before bbolt wrote a page.
		return nil, emptyDBError(dbPath)
	}

	db, err := openDB(dbPath, opts.LockTimeout, true)
	if err != nil {
		return nil, err
	}
	s := &Store{dir: dir, db: db, path: dbPath, lockTimeout: opts.LockTimeout}
	if err := s.init(dbPath, keyPath, key, haveKey, dbExisted); err != nil {
		return nil, errors.Join(err, guard(dbPath, db.Close))
	}
	if err := s.view(walk); err != nil {
		return nil, errors.Join(err, guard(dbPath, db.Close))
	}
	if opts.Shared {
		s.shared, s.db = true, nil
		if err := guard(dbPath, db.Close); err != nil {
			return nil, fmt.Errorf("closing %s: %w", dbPath, err)
		}
	}
	return s, nil
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating state directory %s: %w", dir, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking state directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s: not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state directory %s has mode %04o: it must not be writable by group or others (chmod go-w %s)", dir, fi.Mode().Perm(), dir)
	}
	return nil
}

func readKey(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: it must be readable by its owner only (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key file %s: %w", path, err)
	}
	if len(key) != chacha20poly1305.KeySize {
		return nil, fmt.Errorf("key file %s: %d bytes, want %d", path, len(key), chacha20poly1305.KeySize)
	}
	return key, nil
}

func (s *Store) init(dbPath, keyPath string, key []byte, haveKey, dbExisted bool) error {
	var schema int
	var check []byte
	encrypted := 0
	err := s.view(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			for _, name := range allBuckets[1:] {
				if tx.Bucket(name) != nil {
					return corrupt(dbPath, "bucket %q is missing while %q is there", bucketMeta, name)
				}
			}
			if dbExisted && hasForeignBuckets(tx) {
				return fmt.Errorf("%s is a bbolt file but not an airlock state database", dbPath)
			}
			return nil
		}
		v, err := strconv.Atoi(string(meta.Get(keySchema)))
		if err != nil {
			return fmt.Errorf("%s: unreadable schema version %q", dbPath, meta.Get(keySchema))
		}
		schema = v
		check = append([]byte(nil), meta.Get(keyKeyCheck)...)
		for _, b := range [][]byte{bucketSecrets, bucketJournal} {
			if bk := tx.Bucket(b); bk != nil {
				encrypted += bk.Stats().KeyN
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if schema > SchemaVersion {
		return fmt.Errorf("%s has schema version %d; this airlock reads up to %d: upgrade airlock", dbPath, schema, SchemaVersion)
	}
	if !haveKey {
		if encrypted > 0 {
			return fmt.Errorf("key file %s is missing but %s holds %d encrypted records (secrets, lease handles): restore the key file; without it no secret can be read", keyPath, dbPath, encrypted)
		}
		check = nil // nothing is encrypted yet: a new key gets a new key check
		key = make([]byte, chacha20poly1305.KeySize)
		if _, err := rand.Read(key); err != nil {
			return fmt.Errorf("generating state key: %w", err)
		}
		if err := writeKey(keyPath, key); err != nil {
			return err
		}
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return fmt.Errorf("initialising cipher: %w", err)
	}
	s.aead = aead
	m := hmac.New(sha256.New, key)
	m.Write([]byte("airlock credential fingerprint"))
	s.fpKey = m.Sum(nil)
	if check != nil {
		if _, err := s.open(bucketMeta, keyKeyCheck, check); err != nil {
			return fmt.Errorf("key file %s does not match %s (key check failed): restore the key that belongs to this database", keyPath, dbPath)
		}
	}
	if schema == SchemaVersion && check != nil {
		return nil
	}
	return s.update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("creating bucket %s: %w", name, err)
			}
		}
		meta, err := bucket(tx, bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
			return err
		}
		if check == nil || !haveKey {
			sealed, err := s.seal(bucketMeta, keyKeyCheck, []byte("airlock state key check"))
			if err != nil {
				return err
			}
			return meta.Put(keyKeyCheck, sealed)
		}
		return nil
	})
}

func hasForeignBuckets(tx *bolt.Tx) bool {
	foreign := false
	_ = tx.ForEach(func([]byte, *bolt.Bucket) error { foreign = true; return nil })
	return foreign
}

func writeKey(path string, key []byte) error {
	if err := atomicfile.CreateOnce(path, key, 0o600); err != nil {
		return fmt.Errorf("creating key file %s: %w", path, err)
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error {
	if s.shared {
		return nil
	}
	return guard(s.path, s.db.Close)
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// seal encrypts plaintext with the record's bucket and key as associated
// data: nonce || ciphertext.
func (s *Store) seal(bucket, key, plaintext []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("generating nonce: %w", err)
	}
	return s.aead.Seal(nonce, nonce, plaintext, recordAD(bucket, key)), nil
}

func (s *Store) open(bucket, key, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, fmt.Errorf("decrypting %s/%s: record too short", bucket, key)
	}
	pt, err := s.aead.Open(nil, sealed[:n], sealed[n:], recordAD(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("decrypting %s/%s: authentication failed (wrong key or tampered record)", bucket, key)
	}
	return pt, nil
}

func recordAD(bucket, key []byte) []byte {
	ad := make([]byte, 0, len(bucket)+1+len(key))
	ad = append(ad, bucket...)
	ad = append(ad, '/')
	return append(ad, key...)
}

// Fingerprint is a short keyed SHA-256 fingerprint of a credential value
// (HMAC under a key derived from the state key, so a fingerprint in an
// audit file cannot be brute-forced back to a short value).
func (s *Store) Fingerprint(value []byte) string {
	m := hmac.New(sha256.New, s.fpKey)
	m.Write(value)
	return "sha256:" + hex.EncodeToString(m.Sum(nil))[:12]
}

// KeyID names the sealing key without revealing it (a keyed fingerprint
// of a constant): hosts of one fleet show the same id.
func (s *Store) KeyID() string { return s.Fingerprint([]byte("airlock sealing key id")) }

// secretRecord is a secret as stored: the value sealed.
type secretRecord struct {
	Name    string            `json:"name"`
	Backend string            `json:"backend"`
	Created time.Time         `json:"created"`
	Params  map[string]string `json:"params,omitempty"`
	Sealed  []byte            `json:"sealed"`
}

// PutSecret creates or replaces a secret.
func (s *Store) PutSecret(sec Secret) error {
	if err := sec.Validate(); err != nil {
		return fmt.Errorf("storing secret %q: %w", sec.Name, err)
	}
	if sec.Created.IsZero() {
		sec.Created = time.Now().UTC()
	}
	key := []byte(sec.Name)
	sealed, err := s.seal(bucketSecrets, key, sec.Value)
	if err != nil {
		return fmt.Errorf("storing secret %q: %w", sec.Name, err)
	}
	rec, err := json.Marshal(secretRecord{Name: sec.Name, Backend: sec.Backend, Created: sec.Created, Params: sec.Params, Sealed: sealed})
	if err != nil {
		return fmt.Errorf("storing secret %q: %w", sec.Name, err)
	}
	if err := s.commit(record{Kind: KindSecrets, Key: sec.Name, Value: rec}); err != nil {
		return fmt.Errorf("storing secret %q: %w", sec.Name, err)
	}
	return nil
}

// Secret returns a secret with its value decrypted.
func (s *Store) Secret(name string) (Secret, error) {
	var rec secretRecord
	v, err := s.getRecord(KindSecrets, name)
	if err == nil && v == nil {
		err = fmt.Errorf("secret %q: %w", name, ErrNotFound)
	}
	if err == nil {
		err = json.Unmarshal(v, &rec)
	}
	if err != nil {
		return Secret{}, fmt.Errorf("reading secret %q: %w", name, err)
	}
	val, err := s.open(bucketSecrets, []byte(name), rec.Sealed)
	if err != nil {
		return Secret{}, fmt.Errorf("reading secret %q: %w", name, err)
	}
	return Secret{Name: rec.Name, Backend: rec.Backend, Created: rec.Created, Params: rec.Params, Value: val}, nil
}

// Secrets lists every secret without its value, sorted by name.
func (s *Store) Secrets() ([]SecretInfo, error) {
	var out []SecretInfo
	err := s.listRecords(KindSecrets, func(k, v []byte) error {
		var rec secretRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("decoding secret %q: %w", k, err)
		}
		out = append(out, SecretInfo{Name: rec.Name, Backend: rec.Backend, Created: rec.Created, Params: rec.Params})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing secrets: %w", err)
	}
	return out, nil
}

// DeleteSecret removes a secret. It refuses while a lease minted from the
// secret still waits for revocation on this host (revoking needs the
// secret's config).
func (s *Store) DeleteSecret(name string) error {
	live, err := s.allLeases(func(l *leaseRecord) bool { return l.Secret == name && !l.State.final() })
	n := len(live)
	if c, ok := s.remote.(FleetLeaseCounter); ok && err == nil {
		var m int
		m, err = c.LiveLeasesOf(context.Background(), name)
		n += m
	}
	if err == nil && n > 0 {
		err = fmt.Errorf("%d lease(s) minted from secret %q are not revoked yet; wait for the sweeper or run the runner's recovery first", n, name)
	}
	if err == nil {
		err = s.commit(record{Kind: KindSecrets, Key: name, What: fmt.Sprintf("secret %q", name), MustExist: true})
	}
	if err != nil {
		return fmt.Errorf("deleting secret %q: %w", name, err)
	}
	return nil
}
