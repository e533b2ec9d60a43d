// Package leakscan looks for credentials in what a change adds to a git
// repository, on the host, before any of the change's code runs: the rule
// set of gitleaks (github.com/zricethezav/gitleaks/v8, MIT) used as a
// library, plus an exact match of every value in Airlock's own secret
// store. It reports where (commit, file, line), which rule, and the
// matched text masked; a stored secret is reported by its name only. No
// value is written anywhere: not to a log, a finding, an error or a file.
package leakscan

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/viper"
	"github.com/zricethezav/gitleaks/v8/config"
	"github.com/zricethezav/gitleaks/v8/detect"
	"github.com/zricethezav/gitleaks/v8/logging"

	"github.com/airlock-ci/airlock/secrets/mask"
)

// Mode is a repository's leak-scan policy.
type Mode string

// Modes: block fails the job before any of its code runs; warn writes the
// findings into the job log; both record a leak_found audit record.
const (
	Block Mode = "block"
	Warn  Mode = "warn"
	Off   Mode = "off"
)

// DefaultMode applies to repositories whose policy sets none.
const DefaultMode = Warn

// ParseMode parses "block", "warn" or "off" ("" is DefaultMode).
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return DefaultMode, nil
	case Block, Warn, Off:
		return m, nil
	}
	return "", fmt.Errorf("parsing leak-scan mode %q: want block, warn or off", s)
}

// Range is what a change adds: the commits reachable from Head but not
// from Base, in the repository at GitDir (a work tree or a bare git dir).
// An empty or all-zero Base (a new branch) scans Head's own commit.
type Range struct {
	GitDir string
	Base   string
	Head   string
}

// Finding is one credential found in an added line.
type Finding struct {
	Commit string
	File   string
	Line   int
	Rule   string // gitleaks rule id, or "stored-secret"
	// Secret names the stored secret whose value was found ("" for a
	// gitleaks rule).
	Secret string
	// Match is the matched text with the credential masked.
	Match string
}

// RuleStoredSecret is the Rule of a stored secret's value found in a change.
const RuleStoredSecret = "stored-secret"

// String renders a finding for a job log or an error message; it holds no
// credential.
func (f Finding) String() string {
	what := "rule " + f.Rule
	if f.Secret != "" {
		what = fmt.Sprintf("the value of stored secret %q (it is now in git history: rotate it)", f.Secret)
	}
	return fmt.Sprintf("%s:%d in commit %s: %s: %s", f.File, f.Line, short(f.Commit), what, f.Match)
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

// Report is the outcome of a scan.
type Report struct {
	Findings []Finding
	Commits  int   // commits scanned
	Bytes    int64 // bytes of diff scanned
	// Cut says why the scan stopped before the end of the change (size
	// or time bound); "" when it covered everything.
	Cut string
	// Note says what was scanned instead of the range when the range
	// could not be used (a new branch, a base missing from the clone).
	Note string
}

// StoredSecrets reports whether a finding names a stored secret.
func (r *Report) StoredSecrets() bool {
	for _, f := range r.Findings {
		if f.Secret != "" {
			return true
		}
	}
	return false
}

// Scanner scans changes. Its zero value uses the defaults.
type Scanner struct {
	// MaxBytes bounds the diff read (default 32 MiB); MaxTime the whole
	// scan (default 60s). A scan that hits either reports what it found
	// so far with Report.Cut set.
	MaxBytes int64
	MaxTime  time.Duration
	// Values are the stored secrets, name -> value, matched exactly.
	// Values shorter than MinValue bytes are ignored (they would match
	// ordinary text).
	Values map[string]string
	// Git is the git binary (default "git").
	Git string
}

// MinValue is the shortest stored value matched exactly.
const MinValue = 8

var gitleaksConfig struct {
	once sync.Once
	cfg  config.Config
	err  error
}

// rules returns gitleaks' default configuration, parsed once. gitleaks
// logs through a global zerolog logger (findings included): silence it.
func rules() (config.Config, error) {
	gitleaksConfig.once.Do(func() {
		logging.Logger = zerolog.Nop()
		v := viper.New()
		v.SetConfigType("toml")
		if err := v.ReadConfig(strings.NewReader(config.DefaultConfig)); err != nil {
			gitleaksConfig.err = err
			return
		}
		var vc config.ViperConfig
		if err := v.Unmarshal(&vc); err != nil {
			gitleaksConfig.err = err
			return
		}
		gitleaksConfig.cfg, gitleaksConfig.err = vc.Translate()
	})
	if gitleaksConfig.err != nil {
		return config.Config{}, fmt.Errorf("loading the gitleaks rules: %w", gitleaksConfig.err)
	}
	return gitleaksConfig.cfg, nil
}

var zeroSHA = regexp.MustCompile(`^0+$`)

// Scan scans what r adds. An error means the scan could not run at all
// (no repository, an unknown Head); findings are never errors.
func (s *Scanner) Scan(ctx context.Context, r Range) (*Report, error) {
	maxBytes, maxTime := s.MaxBytes, s.MaxTime
	if maxBytes <= 0 {
		maxBytes = 32 << 20
	}
	if maxTime <= 0 {
		maxTime = 60 * time.Second
	}
	git := s.Git
	if git == "" {
		git = "git"
	}
	cfg, err := rules()
	if err != nil {
		return nil, err
	}
	if r.Head == "" {
		return nil, errors.New("scanning for leaks: no head commit")
	}
	rep := &Report{}
	spec := []string{r.Base + ".." + r.Head}
	switch {
	case r.Base == "" || zeroSHA.MatchString(r.Base):
		spec = []string{"-1", r.Head}
		rep.Note = "no base commit (a new branch): scanned the head commit only"
	case exec.CommandContext(ctx, git, "-C", r.GitDir, "cat-file", "-e", r.Base+"^{commit}").Run() != nil:
		spec = []string{"-1", r.Head}
		rep.Note = fmt.Sprintf("base %s is not in the clone: scanned the head commit only", short(r.Base))
	}
	if len(spec) == 2 && shallowBoundary(ctx, git, r.GitDir, r.Head) {
		rep.Note += "; the head commit's parent is not in the (shallow) clone, so what it adds is unknown: nothing scanned"
		return rep, nil
	}
	sctx, cancel := context.WithTimeout(ctx, maxTime)
	defer cancel()
	args := append([]string{"-C", r.GitDir, "log", "-p", "--no-color", "--no-ext-diff", "--no-renames",
		"--diff-filter=AM", "-U0", "--format=commit %H"}, spec...)
	cmd := exec.CommandContext(sctx, git, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("scanning for leaks: %w", err)
	}
	if err := cmd.Start(); err != nil {
		if sctx.Err() != nil && ctx.Err() == nil {
			rep.Cut = fmt.Sprintf("the scan took longer than %s", maxTime)
			return rep, nil
		}
		return nil, fmt.Errorf("scanning for leaks: running git: %w", err)
	}
	d := detect.NewDetectorContext(sctx, cfg)
	d.Redact = 100
	var values []string
	for _, v := range s.Values {
		if len(v) >= MinValue {
			values = append(values, v)
		}
	}
	p := &parser{s: s, d: d, rep: rep, ctx: sctx, m: mask.New(io.Discard, values...)}
	perr := p.run(io.LimitReader(out, maxBytes+1), maxBytes)
	if perr != nil || rep.Cut != "" {
		cancel() // stop git
	}
	_, _ = io.Copy(io.Discard, out)
	werr := cmd.Wait()
	switch {
	case rep.Cut != "":
	case sctx.Err() != nil && ctx.Err() == nil:
		rep.Cut = fmt.Sprintf("the scan took longer than %s", maxTime)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("scanning for leaks: %w", ctx.Err())
	case perr != nil:
		return nil, fmt.Errorf("scanning for leaks: %w", perr)
	case werr != nil:
		return nil, fmt.Errorf("scanning for leaks: git log %s: %w: %s", strings.Join(spec, " "), werr, strings.TrimSpace(stderr.String()))
	}
	return rep, nil
}

// shallowBoundary reports whether head has no parent in a shallow clone:
// its diff would show the whole tree as added.
func shallowBoundary(ctx context.Context, git, dir, head string) bool {
	if exec.CommandContext(ctx, git, "-C", dir, "rev-parse", "--verify", "-q", head+"^").Run() == nil {
		return false
	}
	out, err := exec.CommandContext(ctx, git, "-C", dir, "rev-parse", "--is-shallow-repository").Output()
	return err == nil && strings.TrimSpace(string(out)) == "true"
}

// parser reads `git log -p -U0` and scans the added lines of each file of
// each commit as one fragment.
type parser struct {
	s   *Scanner
	d   *detect.Detector
	rep *Report
	ctx context.Context
	m   *mask.Writer // stored values and well-known token shapes

	commit, file string
	lines        []string // added lines of the current file
	numbers      []int    // their line numbers in the new file
	next         int      // line number of the next added line
}

func (p *parser) run(r io.Reader, maxBytes int64) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		p.rep.Bytes += int64(len(line))
		if p.rep.Bytes > maxBytes {
			p.flush()
			p.rep.Cut = fmt.Sprintf("the change's diff is larger than %d MiB: scanned the first %d MiB", maxBytes>>20, maxBytes>>20)
			return nil
		}
		if len(line) > 0 {
			p.line(strings.TrimSuffix(line, "\n"))
		}
		if err == io.EOF {
			p.flush()
			return nil
		}
		if err != nil {
			if p.ctx.Err() != nil {
				p.flush()
				return nil
			}
			return err
		}
	}
}

func (p *parser) line(l string) {
	switch {
	case strings.HasPrefix(l, "commit ") && len(l) >= 47:
		p.flush()
		p.commit, p.file = l[7:], ""
		p.rep.Commits++
	case strings.HasPrefix(l, "+++ "):
		p.flush()
		p.file = strings.TrimPrefix(strings.TrimPrefix(l[4:], "b/"), "\"")
		p.file = strings.TrimSuffix(p.file, "\"")
	case strings.HasPrefix(l, "@@ "):
		// @@ -a[,b] +c[,d] @@
		if i := strings.Index(l, " +"); i >= 0 {
			f := l[i+2:]
			if j := strings.IndexAny(f, ", "); j >= 0 {
				f = f[:j]
			}
			p.next, _ = strconv.Atoi(f)
		}
	case strings.HasPrefix(l, "+") && p.file != "":
		p.lines = append(p.lines, l[1:])
		p.numbers = append(p.numbers, p.next)
		p.next++
	}
}

// flush scans the added lines of the current file.
func (p *parser) flush() {
	if len(p.lines) == 0 {
		return
	}
	lines, numbers := p.lines, p.numbers
	p.lines, p.numbers = nil, nil
	text := strings.Join(lines, "\n")
	//lint:ignore SA1019 gitleaks v8 has no replacement for detect.Fragment (sources.Fragment comes with v9)
	for _, f := range p.d.DetectContext(p.ctx, detect.Fragment{Raw: text, FilePath: p.file, CommitSHA: p.commit}) {
		n := 0
		if f.StartLine >= 0 && f.StartLine < len(numbers) {
			n = numbers[f.StartLine]
		}
		p.rep.Findings = append(p.rep.Findings, Finding{
			Commit: p.commit, File: p.file, Line: n, Rule: f.RuleID,
			Match: p.maskMatch(lines[min(max(f.StartLine, 0), len(lines)-1)], f.Secret),
		})
	}
	for name, v := range p.s.Values {
		if len(v) < MinValue {
			continue
		}
		for i, l := range lines {
			if strings.Contains(l, v) {
				p.rep.Findings = append(p.rep.Findings, Finding{
					Commit: p.commit, File: p.file, Line: numbers[i], Rule: RuleStoredSecret, Secret: name,
					Match: p.maskMatch(l, v),
				})
			}
		}
	}
}

// maskMatch returns line (trimmed, at most 120 bytes) with secret, every
// stored value and every well-known token replaced by [MASKED]; gitleaks'
// own redaction is not relied upon.
func (p *parser) maskMatch(line, secret string) string {
	if secret != "" {
		line = strings.ReplaceAll(line, secret, mask.Replacement)
	}
	line = p.m.MaskString(line)
	line = strings.TrimSpace(line)
	if len(line) > 120 {
		line = line[:117] + "..."
	}
	return line
}
