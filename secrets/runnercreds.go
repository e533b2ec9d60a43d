package secrets

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketRunnerCreds holds coordinator registrations (a GitHub runner's
// private key and client id), sealed like secrets. They are not secrets a
// grant can hand to a job: nothing but the coordinator that owns one reads
// it.
var bucketRunnerCreds = []byte("runner_credentials")

// PutRunnerCredential stores (sealed) the credential of coordinator
// registration name, e.g. "github:build-1".
func (s *Store) PutRunnerCredential(name string, value []byte) error {
	sealed, err := s.seal(bucketRunnerCreds, []byte(name), value)
	if err != nil {
		return fmt.Errorf("storing runner credential %q: %w", name, err)
	}
	err = s.update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketRunnerCreds)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), sealed)
	})
	if err != nil {
		return fmt.Errorf("storing runner credential %q: %w", name, err)
	}
	return nil
}

// RunnerCredential returns the decrypted credential of registration name.
func (s *Store) RunnerCredential(name string) ([]byte, error) {
	var sealed []byte
	err := s.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketRunnerCreds); b != nil {
			sealed = append([]byte(nil), b.Get([]byte(name))...)
		}
		if len(sealed) == 0 {
			return fmt.Errorf("runner credential %q: %w", name, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading runner credential: %w", err)
	}
	v, err := s.open(bucketRunnerCreds, []byte(name), sealed)
	if err != nil {
		return nil, fmt.Errorf("reading runner credential %q: %w", name, err)
	}
	return v, nil
}

// DeleteRunnerCredential removes the credential of registration name (no
// error when there is none).
func (s *Store) DeleteRunnerCredential(name string) error {
	err := s.update(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketRunnerCreds); b != nil {
			return b.Delete([]byte(name))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting runner credential %q: %w", name, err)
	}
	return nil
}
