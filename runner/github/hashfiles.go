package github

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/runner/job"
)

// maxHashFiles bounds the files hashFiles lists in the workspace.
const maxHashFiles = 100000

// hashFiles implements hashFiles(patterns) over the job's workspace in
// the container: the files matching any pattern (globs relative to the
// workspace; "**" crosses directories, a leading "!" excludes), sorted,
// each hashed with SHA-256, then SHA-256 over those digests; "" when no
// file matches (docs/adrs/0279-hashFiles-expression-function.md).
func (d *Driver) hashFiles(ctx context.Context, h job.StepHost, patterns []string) (string, error) {
	var inc, exc []*regexp.Regexp
	for _, p := range patterns {
		for _, line := range strings.Split(p, "\n") {
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			neg := strings.HasPrefix(line, "!")
			re, err := globRegexp(strings.TrimPrefix(line, "!"))
			if err != nil {
				return "", err
			}
			if neg {
				exc = append(exc, re)
			} else {
				inc = append(inc, re)
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var list strings.Builder
	code, err := h.Exec(ctx, job.StepExec{Cmd: []string{"/bin/sh", "-c", `cd -- "$1" && find . -type f | head -n ` + fmt.Sprint(maxHashFiles), "hash", h.WorkDir()}, Stdout: &list, Stderr: &list})
	if err != nil || code != 0 {
		return "", fmt.Errorf("listing the workspace: exit %d: %v", code, err)
	}
	var files []string
	sc := bufio.NewScanner(strings.NewReader(list.String()))
	for sc.Scan() {
		f := strings.TrimPrefix(sc.Text(), "./")
		if matchesAny(inc, f) && !matchesAny(exc, f) {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return "", nil
	}
	sort.Strings(files)
	sums := map[string]string{}
	for start := 0; start < len(files); start += 500 {
		batch := files[start:min(start+500, len(files))]
		var out strings.Builder
		code, err := h.Exec(ctx, job.StepExec{Cmd: append([]string{"sha256sum", "--"}, batch...), WorkDir: h.WorkDir(), Stdout: &out})
		if err != nil || code != 0 {
			return "", fmt.Errorf("hashing workspace files: exit %d: %v", code, err)
		}
		for _, l := range strings.Split(out.String(), "\n") {
			sum, name, ok := strings.Cut(l, "  ")
			if ok {
				sums[name] = sum
			}
		}
	}
	all := sha256.New()
	for _, f := range files {
		b, err := hex.DecodeString(sums[f])
		if err != nil || len(b) != sha256.Size {
			return "", fmt.Errorf("hashing %s: no digest", clipText(f))
		}
		all.Write(b)
	}
	return hex.EncodeToString(all.Sum(nil)), nil
}

func matchesAny(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

// globRegexp compiles a workspace glob: "**" any path, "*" within a
// segment, "?" one character; a leading "./" or the workspace path is
// dropped.
func globRegexp(g string) (*regexp.Regexp, error) {
	g = strings.TrimPrefix(g, "./")
	if g == "" || strings.HasPrefix(g, "/") || strings.Contains(g, "..") {
		return nil, fmt.Errorf("hashFiles pattern %q: must be relative to the workspace", clipText(g))
	}
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(g); i++ {
		switch c := g[i]; {
		case strings.HasPrefix(g[i:], "**/"):
			b.WriteString("(?:.*/)?")
			i += 2
		case strings.HasPrefix(g[i:], "**"):
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}
