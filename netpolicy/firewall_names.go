package netpolicy

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Resource names shared by the sandbox (host veth) and the firewall (per-job
// chain). Both embed a runner tag and a job tag so that a leftover can be
// traced back to its runner and job, and so that a sweep only ever matches
// its own runner's resources:
//
//	host veth:  "al" + RunnerTag + JobTag            (15 characters, IFNAMSIZ-1)
//	chain:      "AIRLOCK-" + RunnerTag + "-" + JobTag (22 characters)
const (
	// HostIfPrefix starts every host-side veth name.
	HostIfPrefix = "al"
	// ChainPrefix starts every per-job iptables chain.
	ChainPrefix = "AIRLOCK-"

	runnerTagLen = 5
	jobTagLen    = 8
)

// RunnerTag returns the short hexadecimal tag derived from a runner id.
func RunnerTag(runnerID string) string {
	return shortHash("runner:"+runnerID, runnerTagLen)
}

// JobTag returns the short hexadecimal tag derived from a job id.
func JobTag(jobID string) string {
	return shortHash("job:"+jobID, jobTagLen)
}

// HostIfName returns the host-side veth name of a job.
func HostIfName(runnerID, jobID string) string {
	return HostIfPrefix + RunnerTag(runnerID) + JobTag(jobID)
}

// ChainName returns the per-job host chain name.
func ChainName(runnerID, jobID string) string {
	return ChainPrefix + RunnerTag(runnerID) + "-" + JobTag(jobID)
}

// JobTagOfHostIf returns the job tag of a host veth name if the name belongs
// to the runner with tag runnerTag.
func JobTagOfHostIf(runnerTag, name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, HostIfPrefix+runnerTag)
	if !ok || !isHex(rest, jobTagLen) {
		return "", false
	}
	return rest, true
}

// JobTagOfChain returns the job tag of a chain name if the chain belongs to
// the runner with tag runnerTag.
func JobTagOfChain(runnerTag, name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, ChainPrefix+runnerTag+"-")
	if !ok || !isHex(rest, jobTagLen) {
		return "", false
	}
	return rest, true
}

// RuleComment is the comment every rule of a job carries. Characters outside
// a conservative set are replaced so that the comment survives the
// iptables-restore quoting.
func RuleComment(runnerID, jobID string) string {
	return "airlock runner=" + commentSafe(runnerID) + " job=" + commentSafe(jobID)
}

func commentSafe(s string) string {
	const max = 100
	if len(s) > max {
		s = s[:max]
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("._:/@+=-", c) >= 0:
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

func shortHash(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:n]
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
