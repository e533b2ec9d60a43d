package runner

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/internal/atomicfile"
)

// JournalKeyFile, in the state directory, is the key of the agent's job
// journal (mode 0600; `airlock doctor` checks it).
const JournalKeyFile = "agent-jobs.key"

// The agent journals every job it accepted until the job's final state is
// reported, so that a job in flight when the agent died is reported failed
// on the next start. A record holds the job token (to report with), so
// each record is sealed with AES-256-GCM under a key of its own in the
// state directory; the file name is the associated data.
const (
	agentJournalDir  = "agent-jobs"
	agentJournalKey  = JournalKeyFile
	agentJournalExt  = ".job"
	agentKeySize     = 32
	agentMaxRecord   = 64 << 10
	agentJournalMode = 0o600
)

// agentJobRecord is one job in flight. Lease is the coordinator's record
// (opaque here; it may hold the job token: sealed on disk).
type agentJobRecord struct {
	Coordinator string    `json:"coordinator"` // Coordinator.Name
	JobID       string    `json:"job_id"`      // job.Job.ID; "" when the job could not be read
	Lease       []byte    `json:"lease"`
	Started     time.Time `json:"started"`
}

// agentJournalEntry is a record as listed, with its file name.
type agentJournalEntry struct {
	agentJobRecord
	name string
}

type agentJournal struct {
	dir  string
	aead cipher.AEAD
}

// openAgentJournal opens (creating) the journal under stateDir.
func openAgentJournal(stateDir string) (*agentJournal, error) {
	dir := filepath.Join(stateDir, agentJournalDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating job journal: %w", err)
	}
	key, err := agentLoadKey(filepath.Join(stateDir, agentJournalKey))
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("opening job journal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("opening job journal: %w", err)
	}
	return &agentJournal{dir: dir, aead: aead}, nil
}

func agentLoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		fi, serr := os.Stat(path)
		if serr != nil {
			return nil, fmt.Errorf("reading job journal key: %w", serr)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("reading job journal key: %s is readable by others (mode %04o); chmod 600 it", path, fi.Mode().Perm())
		}
		if len(b) != agentKeySize {
			return nil, fmt.Errorf("reading job journal key: %s holds %d bytes, want %d", path, len(b), agentKeySize)
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading job journal key: %w", err)
	}
	key := make([]byte, agentKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating job journal key: %w", err)
	}
	if err := agentWriteFile(path, key); err != nil {
		return nil, fmt.Errorf("writing job journal key: %w", err)
	}
	return key, nil
}

// agentWriteFile writes data to path atomically and durably, mode 0600.
func agentWriteFile(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, agentJournalMode)
}

// add records a job before anything of it runs and returns the record's
// name (random: unique whatever the coordinator's ids).
func (j *agentJournal) add(r agentJobRecord) (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("recording job %s: %w", r.JobID, err)
	}
	name := hex.EncodeToString(b) + agentJournalExt
	return name, j.update(name, r)
}

// update replaces the record name.
func (j *agentJournal) update(name string, r agentJobRecord) error {
	pt, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("recording job %s: %w", r.JobID, err)
	}
	nonce := make([]byte, j.aead.NonceSize(), j.aead.NonceSize()+len(pt)+j.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("recording job %s: %w", r.JobID, err)
	}
	sealed := j.aead.Seal(nonce, nonce, pt, []byte(name))
	if len(sealed) > agentMaxRecord {
		return fmt.Errorf("recording job %s: record of %d bytes is larger than %d", r.JobID, len(sealed), agentMaxRecord)
	}
	if err := agentWriteFile(filepath.Join(j.dir, name), sealed); err != nil {
		return fmt.Errorf("recording job %s: %w", r.JobID, err)
	}
	return nil
}

// remove forgets a job whose final state was reported (or that its
// coordinator no longer knows). A missing record is not an error.
func (j *agentJournal) remove(name string) error {
	err := os.Remove(filepath.Join(j.dir, name))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("forgetting job record %s: %w", name, err)
	}
	return atomicfile.SyncDir(j.dir)
}

// sweepTemps removes the temporary files of record writes a crash cut
// short (the record itself is the old one or the new one, never torn).
// Only at recovery: one agent serves a state directory, and none of its
// writes has begun yet.
func (j *agentJournal) sweepTemps() error {
	temps, err := atomicfile.TempsIn(j.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range temps {
		if err := os.Remove(t); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// list returns every recorded job; records that cannot be read are
// reported (and left in place for an admin) without stopping the others.
func (j *agentJournal) list() ([]agentJournalEntry, error) {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("reading job journal: %w", err)
	}
	var out []agentJournalEntry
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, agentJournalExt) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(j.dir, name))
		if err != nil {
			errs = append(errs, fmt.Errorf("reading job record %s: %w", name, err))
			continue
		}
		n := j.aead.NonceSize()
		if len(b) < n+j.aead.Overhead() || len(b) > agentMaxRecord {
			errs = append(errs, fmt.Errorf("reading job record %s: damaged (size %d)", name, len(b)))
			continue
		}
		pt, err := j.aead.Open(nil, b[:n], b[n:], []byte(name))
		if err != nil {
			errs = append(errs, fmt.Errorf("reading job record %s: authentication failed (wrong key or tampered record)", name))
			continue
		}
		var r agentJobRecord
		if err := json.Unmarshal(pt, &r); err != nil {
			errs = append(errs, fmt.Errorf("reading job record %s: %w", name, err))
			continue
		}
		out = append(out, agentJournalEntry{agentJobRecord: r, name: name})
	}
	return out, errors.Join(errs...)
}
