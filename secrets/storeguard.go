package secrets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrCorrupt is returned (wrapped) when state.db is damaged: truncated,
// overwritten or missing a bucket the store relies on.
var ErrCorrupt = errors.New("state database is corrupt")

// ErrEmptyDB is returned (wrapped) when state.db exists with no bytes in
// it while its key file exists: a store that existed and was lost.
var ErrEmptyDB = errors.New("state database is empty")

// corruptError names the file, what is wrong and how to restore it.
type corruptError struct {
	path   string
	detail string
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("%s is corrupt (%s): stop airlock, move the file away and restore state.db from a backup "+
		"(it belongs with its state.key); `airlock state init --force` starts an empty store instead, "+
		"losing its secrets, grants and revocation journal", e.path, e.detail)
}

func (e *corruptError) Is(target error) bool { return target == ErrCorrupt }

func corrupt(path, format string, a ...any) error {
	return &corruptError{path: path, detail: fmt.Sprintf(format, a...)}
}

// guard runs fn so that a panic inside bbolt, or a memory fault on its
// mapping of a damaged file (SIGBUS on a truncated file), becomes a
// corrupt-store error naming path instead of killing the process.
func guard(path string, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = corrupt(path, "reading it failed: %v", r)
		}
	}()
	return fn()
}

// bucket returns a top-level bucket or a corrupt-store error: every
// bucket is created when the store is, so a missing one means damage.
func bucket(tx *bolt.Tx, name []byte) (*bolt.Bucket, error) {
	b := tx.Bucket(name)
	if b == nil {
		return nil, corrupt(tx.DB().Path(), "bucket %q is missing", name)
	}
	return b, nil
}

// bbolt's on-disk format (version 2): a 16-byte page header (id, flags,
// count, overflow), then in pages 0 and 1 the meta: magic, version, page
// size, flags, root bucket (root page, sequence), freelist page, high
// water mark, txid, checksum (FNV-64a of what precedes it).
const (
	boltMagic          = 0xED0CDAED
	boltVersion        = 2
	boltPageHeader     = 16
	boltMetaSize       = 64
	boltFlagBranch     = 0x01
	boltFlagLeaf       = 0x02
	boltFlagFreelist   = 0x10
	boltNoFreelist     = ^uint64(0)
	boltMinPages       = 4
	boltChecksumOffset = 56
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	hwm      uint64
	txid     uint64
}

func parseMeta(b []byte) (boltMeta, bool) {
	if len(b) < boltPageHeader+boltMetaSize {
		return boltMeta{}, false
	}
	m := b[boltPageHeader : boltPageHeader+boltMetaSize]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:boltChecksumOffset])
	if h.Sum64() != le.Uint64(m[boltChecksumOffset:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]),
		hwm: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// precheck looks at a state.db before bbolt maps it: bbolt trusts the
// file's meta page and faults or panics on a file shorter than the meta
// says (a truncation) or whose freelist or root page is not one. It
// returns fs.ErrNotExist for a missing file and ErrEmptyDB for an empty
// one.
func precheck(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	size := fi.Size()
	if size == 0 {
		return ErrEmptyDB
	}
	head := make([]byte, boltPageHeader+boltMetaSize)
	if _, err := f.ReadAt(head, 0); err != nil {
		return corrupt(path, "%d bytes, too short for a state database", size)
	}
	var metas []boltMeta
	m0, ok0 := parseMeta(head)
	pageSize := int64(os.Getpagesize())
	if ok0 {
		metas = append(metas, m0)
		pageSize = int64(m0.pageSize)
	}
	if _, err := f.ReadAt(head, pageSize); err == nil {
		if m1, ok := parseMeta(head); ok {
			metas = append(metas, m1)
		}
	}
	if len(metas) == 0 {
		return corrupt(path, "no valid meta page; not a bbolt file, or overwritten")
	}
	m := metas[0] // bbolt uses the valid meta with the higher txid
	if len(metas) == 2 && metas[1].txid > m.txid {
		m = metas[1]
	}
	if m.pageSize < 512 || m.pageSize&(m.pageSize-1) != 0 {
		return corrupt(path, "page size %d", m.pageSize)
	}
	ps := int64(m.pageSize)
	if m.hwm < boltMinPages || m.root >= m.hwm || (m.freelist >= m.hwm && m.freelist != boltNoFreelist) {
		return corrupt(path, "meta page out of range (root %d, freelist %d, %d pages)", m.root, m.freelist, m.hwm)
	}
	if need := int64(m.hwm) * ps; size < need {
		return corrupt(path, "truncated: %d bytes, its meta page says %d", size, need)
	}
	flags := func(id uint64) (uint16, error) {
		h := make([]byte, boltPageHeader)
		if _, err := f.ReadAt(h, int64(id)*ps); err != nil {
			return 0, corrupt(path, "reading page %d: %v", id, err)
		}
		if got := binary.LittleEndian.Uint64(h); got != id {
			return 0, corrupt(path, "page %d says it is page %d", id, got)
		}
		return binary.LittleEndian.Uint16(h[8:]), nil
	}
	if m.freelist != boltNoFreelist {
		fl, err := flags(m.freelist)
		if err != nil {
			return err
		}
		if fl != boltFlagFreelist {
			return corrupt(path, "freelist page %d has flags %#x", m.freelist, fl)
		}
	}
	fl, err := flags(m.root)
	if err != nil {
		return err
	}
	if fl != boltFlagBranch && fl != boltFlagLeaf {
		return corrupt(path, "root page %d has flags %#x", m.root, fl)
	}
	return nil
}

// emptyDBError is the refusal to re-initialise a store that existed.
func emptyDBError(path string) error {
	return fmt.Errorf("opening state store: %s is empty (0 bytes) although its key file exists: it was truncated "+
		"or lost, and creating a new one would silently drop every secret, grant and revocation; restore it from "+
		"a backup, or run `airlock state init --force` to start an empty store: %w", path, ErrEmptyDB)
}

// walk reads every record of every bucket the store relies on, so that
// damage anywhere reachable is found when the store is opened instead of
// in the middle of a job.
func walk(tx *bolt.Tx) error {
	for _, name := range allBuckets {
		b, err := bucket(tx, name)
		if err != nil {
			return err
		}
		if err := b.ForEach(func(k, v []byte) error { return nil }); err != nil {
			return corrupt(tx.DB().Path(), "bucket %q: %v", name, err)
		}
	}
	return nil
}

// Reinit starts an empty store in dir: it moves an existing state.db
// aside (to state.db.broken-<time>, returned) and creates a new one with
// the same key file. It is what `airlock state init --force` does, the
// one way to replace a store Open refuses. It fails with ErrInUse while
// an airlock process holds the database.
func Reinit(dir string) (moved string, err error) {
	if err := checkDir(dir); err != nil {
		return "", err
	}
	path := filepath.Join(dir, DBFile)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return "", fmt.Errorf("re-initialising %s: %w", path, err)
	default:
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			_ = f.Close()
			return "", fmt.Errorf("re-initialising %s: %w", path, ErrInUse)
		}
		moved = fmt.Sprintf("%s.broken-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		rerr := os.Rename(path, moved)
		if err := errors.Join(rerr, f.Close()); err != nil {
			return "", fmt.Errorf("moving %s aside: %w", path, err)
		}
	}
	st, err := Open(dir, OpenOptions{})
	if err != nil {
		return moved, fmt.Errorf("re-initialising %s: %w", path, err)
	}
	return moved, st.Close()
}

// forEach calls fn for every record of a top-level bucket.
func forEach(tx *bolt.Tx, name []byte, fn func(k, v []byte) error) error {
	b, err := bucket(tx, name)
	if err != nil {
		return err
	}
	return b.ForEach(fn)
}

// put stores one record in a top-level bucket.
func put(tx *bolt.Tx, name, key, value []byte) error {
	b, err := bucket(tx, name)
	if err != nil {
		return err
	}
	return b.Put(key, value)
}
