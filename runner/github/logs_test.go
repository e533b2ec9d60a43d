package github

import (
	"strings"
	"testing"
)

func TestLogSplitterCutsAtStepHeaders(t *testing.T) {
	var parts []stepLog
	var starts []string
	var lines []string
	l := &logSplitter{
		emit: func(done stepLog, next string) { parts = append(parts, done); starts = append(starts, next) },
		line: func(b []byte) { lines = append(lines, strings.TrimRight(string(b), "\n")) },
	}
	in := "setup\n\x1b[36;1m>>> step Build\x1b[0;m\nbuilding\npart" + "ial\n\x1b[36;1m>>> step Te" + "st\x1b[0;m\nok\nno newline at the end"
	// Written in odd chunks: a header and a line split across writes.
	for _, chunk := range []string{in[:10], in[10:40], in[40:47], in[47:60], in[60:]} {
		if _, err := l.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	full := l.finish()
	if string(full) != in {
		t.Errorf("job log = %q, want everything written", full)
	}
	if len(parts) != 3 || parts[0].name != "" || parts[1].name != "Build" || parts[2].name != "Test" {
		t.Fatalf("parts = %+v", parts)
	}
	if got := string(parts[1].data); got != "\x1b[36;1m>>> step Build\x1b[0;m\nbuilding\npartial\n" {
		t.Errorf("Build log = %q", got)
	}
	if got := string(parts[2].data); !strings.HasSuffix(got, "ok\nno newline at the end") {
		t.Errorf("Test log = %q (the unterminated last line belongs to it)", got)
	}
	if strings.Join(starts, ",") != "Build,Test," {
		t.Errorf("step starts = %v", starts)
	}
	if strings.Join(lines, "|") != "setup|building|partial|ok" {
		t.Errorf("live lines = %v (step headers are not live lines)", lines)
	}
}
