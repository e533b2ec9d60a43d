package runner

import (
	"crypto/aes"
	"crypto/cipher"
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
	"strings"
	"time"
)

// The agent journals every job it accepted until the job's final state is
// reported, so that a job in flight when the agent died is reported failed
// on the next start. A record holds the job token (to report with), so
// each record is sealed with AES-256-GCM under a key of its own in the
// state directory; the file name is the associated data.
const (
	agentJournalDir  = "agent-jobs"
	agentJournalKey  = "agent-jobs.key"
	agentJournalExt  = ".job"
	agentKeySize     = 32
	agentMaxRecord   = 64 << 10
	agentJournalMode = 0o600
)

// agentJobRecord is one job in flight.
type agentJobRecord struct {
	Runner  string    `json:"runner"` // [[runners]] name, for logs
	URL     string    `json:"url"`    // coordinator base URL
	JobID   int64     `json:"job_id"`
	Token   string    `json:"token"` // job token: sealed on disk
	Started time.Time `json:"started"`
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
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	cherr := tmp.Chmod(agentJournalMode)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, cherr, serr, cerr); err != nil {
		return errors.Join(err, os.Remove(tmp.Name()))
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return errors.Join(err, os.Remove(tmp.Name()))
	}
	return agentSyncDir(dir)
}

func agentSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// name is the record's file name: coordinator hash and job id.
func (j *agentJournal) name(url string, id int64) string {
	h := sha256.Sum256([]byte(url))
	return hex.EncodeToString(h[:6]) + "-" + strconv.FormatInt(id, 10) + agentJournalExt
}

// add records a job before anything of it runs.
func (j *agentJournal) add(r agentJobRecord) error {
	pt, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("recording job %d: %w", r.JobID, err)
	}
	name := j.name(r.URL, r.JobID)
	nonce := make([]byte, j.aead.NonceSize(), j.aead.NonceSize()+len(pt)+j.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("recording job %d: %w", r.JobID, err)
	}
	sealed := j.aead.Seal(nonce, nonce, pt, []byte(name))
	if err := agentWriteFile(filepath.Join(j.dir, name), sealed); err != nil {
		return fmt.Errorf("recording job %d: %w", r.JobID, err)
	}
	return nil
}

// remove forgets a job whose final state was reported (or that GitLab no
// longer knows). A missing record is not an error.
func (j *agentJournal) remove(url string, id int64) error {
	err := os.Remove(filepath.Join(j.dir, j.name(url, id)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("forgetting job %d: %w", id, err)
	}
	return agentSyncDir(j.dir)
}

// list returns every recorded job; records that cannot be read are
// reported (and left in place for an admin) without stopping the others.
func (j *agentJournal) list() ([]agentJobRecord, error) {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("reading job journal: %w", err)
	}
	var out []agentJobRecord
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
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}
