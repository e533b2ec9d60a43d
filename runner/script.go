package runner

import (
	"strings"
)

// stepShell is the command every step runs: it reads the step's script
// from stdin into a variable first, so that commands of the script see an
// empty stdin (as in GitLab) and the script never appears on a command line.
var stepShell = []string{"/bin/sh", "-c", `__airlock_script=$(cat) && eval "$__airlock_script"`}

// stepScript turns a step's lines into a POSIX shell script that echoes
// each command (GitLab style, "$ cmd") before running it and stops at the
// first failing command, exiting with its status. trace (GitLab's
// CI_DEBUG_TRACE) has the shell print every command it runs, expanded.
func stepScript(lines []string, trace bool) string {
	var b strings.Builder
	b.WriteString("set -e\n")
	if trace {
		b.WriteString("set -x\n")
	}
	for _, l := range lines {
		b.WriteString("printf '\\033[32;1m$ %s\\033[0;m\\n' ")
		b.WriteString(shellQuote(strings.TrimRight(l, "\n")))
		b.WriteString("\n")
		b.WriteString(l)
		if !strings.HasSuffix(l, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// debugTrace: the job asks for GitLab's shell tracing (CI_DEBUG_TRACE).
func (e *execution) debugTrace() bool { return e.jobVar("CI_DEBUG_TRACE") == "true" }

// shellQuote quotes s for a POSIX shell as one word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
