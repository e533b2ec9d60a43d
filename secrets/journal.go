package secrets

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/airlock-ci/airlock/internal/procs"
)

// LeaseState is where a credential is in its life.
type LeaseState string

// Lease states. Intent is written (and fsynced) before the backend is
// asked to mint; a crash between the two leaves an intent without a handle.
const (
	LeaseIntent       LeaseState = "intent"
	LeaseMinted       LeaseState = "minted"
	LeaseRevoked      LeaseState = "revoked"
	LeaseRevokeFailed LeaseState = "revoke_failed" // the sweeper retries
	LeaseExpired      LeaseState = "expired"       // revocation never succeeded; the credential's own expiry passed
	LeaseUnknown      LeaseState = "unknown"       // intent without handle found on recovery: nothing to revoke by handle
)

func (s LeaseState) final() bool {
	return s == LeaseRevoked || s == LeaseExpired || s == LeaseUnknown
}

// Lease is a journal entry as shown to callers (never the handle).
type Lease struct {
	ID          string
	JobID       string
	GrantID     string
	Secret      string
	Backend     string
	State       LeaseState
	Fingerprint string
	Created     time.Time
	Expires     time.Time
	Attempts    int
	LastError   string
}

type leaseRecord struct {
	ID          string     `json:"id"`
	JobID       string     `json:"job"`
	GrantID     string     `json:"grant"`
	Secret      string     `json:"secret"`
	Backend     string     `json:"backend"`
	State       LeaseState `json:"state"`
	Handle      []byte     `json:"handle,omitempty"` // sealed
	Fingerprint string     `json:"fingerprint,omitempty"`
	Created     time.Time  `json:"created"`
	Expires     time.Time  `json:"expires,omitzero"`
	Attempts    int        `json:"attempts,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Updated     time.Time  `json:"updated"`
}

func (l *leaseRecord) key() []byte { return []byte(l.JobID + "/" + l.ID) }

func (l *leaseRecord) public() Lease {
	return Lease{ID: l.ID, JobID: l.JobID, GrantID: l.GrantID, Secret: l.Secret, Backend: l.Backend, State: l.State,
		Fingerprint: l.Fingerprint, Created: l.Created, Expires: l.Expires, Attempts: l.Attempts, LastError: l.LastError}
}

// JobState is where a job is as far as credentials go.
type JobState string

// Job states.
const (
	JobRunning   JobState = "running"
	JobFinished  JobState = "finished"
	JobRecovered JobState = "recovered" // found running on start and cleaned up
)

// JobRecord is a job as the store remembers it.
type JobRecord struct {
	ID       string    `json:"id"`
	Repo     string    `json:"repo"`
	Ref      string    `json:"ref"`
	State    JobState  `json:"state"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// Owner is the process that runs the job; recovery leaves the jobs of
	// live processes alone.
	Owner procs.Owner `json:"owner"`
}

// putLeases writes lease records (and optionally a job record) in one
// fsynced transaction.
func (s *Store) putLeases(jr *JobRecord, ls ...*leaseRecord) error {
	if err := s.putLeasesLocal(jr, ls...); err != nil {
		return err
	}
	return s.mirrorLeases(ls)
}

func (s *Store) putLeasesLocal(jr *JobRecord, ls ...*leaseRecord) error {
	return s.update(func(tx *bolt.Tx) error {
		if jr != nil {
			v, err := json.Marshal(jr)
			if err != nil {
				return err
			}
			if err := put(tx, bucketJobs, []byte(jr.ID), v); err != nil {
				return err
			}
		}
		b, err := bucket(tx, bucketJournal)
		if err != nil {
			return err
		}
		for _, l := range ls {
			l.Updated = time.Now().UTC()
			v, err := json.Marshal(l)
			if err != nil {
				return err
			}
			if err := b.Put(l.key(), v); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) sealHandle(l *leaseRecord, handle string) error {
	sealed, err := s.seal(bucketJournal, l.key(), []byte(handle))
	if err != nil {
		return err
	}
	l.Handle = sealed
	return nil
}

func (s *Store) openHandle(l *leaseRecord) (string, error) {
	if l.Handle == nil {
		return "", nil
	}
	h, err := s.open(bucketJournal, l.key(), l.Handle)
	if err != nil {
		return "", err
	}
	return string(h), nil
}

// jobLeases returns the lease records of one job.
func (s *Store) jobLeases(jobID string) ([]*leaseRecord, error) {
	var out []*leaseRecord
	prefix := []byte(jobID + "/")
	err := s.view(func(tx *bolt.Tx) error {
		b, err := bucket(tx, bucketJournal)
		if err != nil {
			return err
		}
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var l leaseRecord
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("decoding lease %s: %w", k, err)
			}
			out = append(out, &l)
		}
		return nil
	})
	return out, err
}

// allLeases returns every lease record matching keep.
func (s *Store) allLeases(keep func(*leaseRecord) bool) ([]*leaseRecord, error) {
	var out []*leaseRecord
	err := s.view(func(tx *bolt.Tx) error {
		return forEach(tx, bucketJournal, func(k, v []byte) error {
			var l leaseRecord
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("decoding lease %s: %w", k, err)
			}
			if keep(&l) {
				out = append(out, &l)
			}
			return nil
		})
	})
	return out, err
}

// Leases returns the journal entries of a job ("" = every job).
func (s *Store) Leases(jobID string) ([]Lease, error) {
	var recs []*leaseRecord
	var err error
	if jobID == "" {
		recs, err = s.allLeases(func(*leaseRecord) bool { return true })
	} else {
		recs, err = s.jobLeases(jobID)
	}
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	out := make([]Lease, len(recs))
	for i, r := range recs {
		out[i] = r.public()
	}
	return out, nil
}

// Job returns a job record.
func (s *Store) Job(id string) (JobRecord, error) {
	var jr JobRecord
	err := s.view(func(tx *bolt.Tx) error {
		b, err := bucket(tx, bucketJobs)
		if err != nil {
			return err
		}
		v := b.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("job %q: %w", id, ErrNotFound)
		}
		return json.Unmarshal(v, &jr)
	})
	return jr, err
}

// Jobs returns every job record in the given state ("" = all).
func (s *Store) Jobs(state JobState) ([]JobRecord, error) {
	var out []JobRecord
	err := s.view(func(tx *bolt.Tx) error {
		return forEach(tx, bucketJobs, func(k, v []byte) error {
			var jr JobRecord
			if err := json.Unmarshal(v, &jr); err != nil {
				return fmt.Errorf("decoding job %s: %w", k, err)
			}
			if state == "" || jr.State == state {
				out = append(out, jr)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	return out, nil
}

func (s *Store) setJobState(id string, st JobState) error {
	return s.update(func(tx *bolt.Tx) error {
		b, err := bucket(tx, bucketJobs)
		if err != nil {
			return err
		}
		var jr JobRecord
		if v := b.Get([]byte(id)); v != nil {
			if err := json.Unmarshal(v, &jr); err != nil {
				return err
			}
		} else {
			jr = JobRecord{ID: id}
		}
		jr.State = st
		jr.Finished = time.Now().UTC()
		v, err := json.Marshal(jr)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), v)
	})
}
