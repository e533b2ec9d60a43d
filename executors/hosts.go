package executors

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/airlock-ci/airlock/internal/atomicfile"
)

// LocalhostLines are the lines of a job's /etc/hosts that Docker writes
// for a container without a network: localhost resolves without asking
// the job's gateway.
const LocalhostLines = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// WriteHostsFile writes the read-only /etc/hosts an executor mounts into
// every job that brings none of its own, atomically (a job of another
// process may be mounting it), and only when its content differs.
func WriteHostsFile(path, content string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == content {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing the jobs' /etc/hosts: %w", err)
	}
	if err := atomicfile.WriteFile(path, []byte(content), 0o444); err != nil {
		return fmt.Errorf("writing the jobs' /etc/hosts: %w", err)
	}
	return nil
}

// MountsHosts says whether mounts bring the job's own /etc/hosts.
func MountsHosts(mounts []Mount) bool {
	for _, m := range mounts {
		if m.Target == "/etc/hosts" {
			return true
		}
	}
	return false
}
