package github

import (
	"reflect"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/secrets/mask"
)

func TestParseKeyValueFile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []kv
		err  string
	}{
		{"A=1\nB=x=y\n", []kv{{"A", "1"}, {"B", "x=y"}}, ""},
		{"A<<EOF\nl1\nl2\nEOF\nB=2", []kv{{"A", "l1\nl2"}, {"B", "2"}}, ""},
		{"A=has<<inside\n", []kv{{"A", "has<<inside"}}, ""},  // '=' first
		{"A<<E=F\nv\nE=F\n", []kv{{"A", "v"}}, ""},           // '<<' first: the delimiter may hold '='
		{"A<<EOF\r\nwin\r\nEOF\r\n", []kv{{"A", "win"}}, ""}, // CRLF
		{"\n\nA=1\n\n", []kv{{"A", "1"}}, ""},                // blank lines
		{"A<<EOF\nEOF\n", []kv{{"A", ""}}, ""},               // empty heredoc
		{"A<<EOF\nnever closed\n", nil, `heredoc delimiter "EOF" not found`},
		{"=v\n", nil, "empty name"},
		{"A<<\nx\n", nil, "empty heredoc delimiter"},
		{"just text\n", nil, "want NAME=value"},
	} {
		got, err := parseKeyValueFile(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseKeyValueFile(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseKeyValueFile(%q) = %v, %v, want %v", tc.in, got, err, tc.want)
		}
	}
}

type recordSink struct {
	masks   []string
	ann     []Annotation
	outputs map[string]string
	state   map[string]string
	dbg     bool
}

func (r *recordSink) mask(v ...string) int {
	r.masks = append(r.masks, v...)
	n := 0
	for _, s := range v {
		if len(s) < mask.MinLength {
			n++
		}
	}
	return n
}
func (r *recordSink) annotate(a Annotation) { r.ann = append(r.ann, a) }
func (r *recordSink) setOutput(n, v string) { r.outputs[n] = v }
func (r *recordSink) saveState(n, v string) { r.state[n] = v }
func (r *recordSink) debug() bool           { return r.dbg }

func TestCommandWriter(t *testing.T) {
	sink := &recordSink{outputs: map[string]string{}, state: map[string]string{}}
	var out strings.Builder
	w := newCommandWriter(&out, sink)
	input := strings.Join([]string{
		"plain line",
		"  ::add-mask::multi%0Aline-secret",
		"::error file=x.go,line=7,col=2,endLine=9,title=T%3A1::boom%25",
		"##[warning file=y.go]legacy",
		"::set-output name=o::v1",
		"::save-state name=s::v2",
		"::debug::hidden",
		"::stop-commands::resume-me-please",
		"::add-mask::not-a-command-now",
		"::resume-me-please::",
		"::group::G",
		"::endgroup::",
		"::set-env name=X::y",
		"::unknown::passed on",
		"::not a command",
		"partial",
	}, "\n")
	// Written in small pieces: commands split across writes still work.
	for i := 0; i < len(input); i += 7 {
		w.Write([]byte(input[i:min(i+7, len(input))]))
	}
	w.Flush()
	got := out.String()
	want := strings.Join([]string{
		"plain line",
		"##[warning]::add-mask:: a value shorter than 8 characters is not masked (Airlock masks values of 8 characters or more)",
		"##[error]boom%",
		"##[warning]legacy",
		"::add-mask::not-a-command-now",
		"##[group]G",
		"##[endgroup]",
		"##[error]The `set-env` command is disabled. Use the GITHUB_ENV / GITHUB_PATH files instead.",
		"::unknown::passed on",
		"::not a command",
		"partial",
	}, "\n")
	if got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
	if !reflect.DeepEqual(sink.masks, []string{"multi\nline-secret", "multi", "line-secret", "resume-me-please"}) {
		t.Errorf("masks = %q", sink.masks)
	}
	if len(sink.ann) != 3 || sink.ann[0] != (Annotation{Level: "error", Message: "boom%", Title: "T:1", File: "x.go", Line: 7, EndLine: 9, Col: 2}) {
		t.Errorf("annotations = %+v", sink.ann)
	}
	if sink.outputs["o"] != "v1" || sink.state["s"] != "v2" {
		t.Errorf("outputs %v state %v", sink.outputs, sink.state)
	}
	if len(w.failed) != 1 {
		t.Errorf("failed = %v, want the set-env refusal", w.failed)
	}
}

func TestShellCommand(t *testing.T) {
	d := &Driver{}
	for _, tc := range []struct {
		shell   string
		hasBash bool
		want    string
		err     string
	}{
		{"", true, "bash -e {0}", ""},
		{"", false, "sh -e {0}", ""},
		{"bash", false, "bash --noprofile --norc -e -o pipefail {0}", ""},
		{"sh", true, "sh -e {0}", ""},
		{"python", true, "python {0}", ""},
		{"perl -w {0}", true, "perl -w {0}", ""},
		{"perl -w", true, "", "must contain {0}"},
		{"pwsh", true, "", "not supported"},
	} {
		d.hasBash = tc.hasBash
		argv, _, err := d.shellCommand(tc.shell)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("shellCommand(%q) error = %v, want %q", tc.shell, err, tc.err)
			}
			continue
		}
		if got := strings.Join(argv, " "); err != nil || got != tc.want {
			t.Errorf("shellCommand(%q, bash %v) = %q, %v, want %q", tc.shell, tc.hasBash, got, err, tc.want)
		}
	}
}

func TestSplitCollected(t *testing.T) {
	got, err := splitCollected("3\nabc-1\n0\n2\nx\n", 4)
	if err != nil || !reflect.DeepEqual(got, []string{"abc", "", "", "x\n"}) {
		t.Errorf("splitCollected = %q, %v", got, err)
	}
	if _, err := splitCollected("5\nab", 1); err == nil {
		t.Error("truncated content accepted")
	}
}

// A value too short to mask is said so in the log, never dropped quietly;
// the warning does not show the value.
func TestAddMaskTooShortIsSaid(t *testing.T) {
	sink := &recordSink{outputs: map[string]string{}, state: map[string]string{}}
	var out strings.Builder
	w := newCommandWriter(&out, sink)
	w.Write([]byte("::add-mask::4711\n::add-mask::long-enough-1\nafter\n"))
	w.Flush()
	want := "##[warning]::add-mask:: a value shorter than 8 characters is not masked (Airlock masks values of 8 characters or more)\nafter\n"
	if got := out.String(); got != want {
		t.Errorf("output = %q, want %q", got, want)
	}
	if !reflect.DeepEqual(sink.masks, []string{"4711", "long-enough-1"}) {
		t.Errorf("masks = %q", sink.masks)
	}
}
