package github

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/airlock-ci/airlock/secrets/mask"
)

// Annotation is an ::error/::warning/::notice the job emitted; GitHub
// shows them on the run (completejob annotations).
type Annotation struct {
	Level     string // "error", "warning", "notice"
	Message   string
	Title     string
	File      string
	Line      int
	EndLine   int
	Col       int
	EndColumn int
	StepRef   string // the step's id in the message
	StepName  string
}

// commandSink is what workflow commands change.
type commandSink interface {
	mask(values ...string) (refused int)
	annotate(a Annotation)
	setOutput(name, value string)
	saveState(name, value string)
	debug() bool
}

// maxLine bounds a line kept while waiting for its end (longer lines are
// passed on unparsed).
const maxLine = 1 << 20

// commandWriter reads a step's output line by line, acts on workflow
// commands (::name k=v::data, and the legacy ##[name k=v]data) and passes
// everything else on. ::add-mask:: registers the value before any later
// byte is written and the command line itself is never passed on.
type commandWriter struct {
	mu      sync.Mutex
	out     io.Writer
	sink    commandSink
	buf     []byte
	stopped string // the ::stop-commands:: token while commands are off
	failed  []string
}

func newCommandWriter(out io.Writer, sink commandSink) *commandWriter {
	return &commandWriter{out: out, sink: sink}
}

func (w *commandWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			if len(w.buf) > maxLine {
				_, err := w.out.Write(w.buf)
				w.buf = w.buf[:0]
				if err != nil {
					return 0, err
				}
			}
			return n, nil
		}
		line := append(w.buf, p[:i+1]...)
		w.buf = nil
		p = p[i+1:]
		if err := w.line(line); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Flush passes on a last line without a newline.
func (w *commandWriter) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) == 0 {
		return nil
	}
	line := w.buf
	w.buf = nil
	return w.line(line)
}

func (w *commandWriter) line(raw []byte) error {
	text := strings.TrimRight(string(raw), "\r\n")
	name, props, data, ok := parseCommand(text)
	if w.stopped != "" {
		if ok && name == w.stopped {
			w.stopped = ""
			return nil
		}
		_, err := w.out.Write(raw)
		return err
	}
	if !ok {
		_, err := w.out.Write(raw)
		return err
	}
	emit := func(s string) error {
		_, err := io.WriteString(w.out, s+"\n")
		return err
	}
	switch name {
	case "add-mask":
		v := strings.TrimSpace(data)
		if v != "" {
			vals := []string{v}
			for _, l := range strings.Split(v, "\n") {
				if l = strings.TrimSpace(l); l != "" && l != v {
					vals = append(vals, l)
				}
			}
			if w.sink.mask(vals...) > 0 {
				return emit(fmt.Sprintf("##[warning]::add-mask:: a value shorter than %d characters is not masked (Airlock masks values of %d characters or more)", mask.MinLength, mask.MinLength))
			}
		}
		return nil
	case "stop-commands":
		if data == "" {
			return emit("##[error]::stop-commands:: needs a token")
		}
		if len(data) > 6 {
			w.sink.mask(data)
		}
		w.stopped = data
		return nil
	case "group":
		return emit("##[group]" + data)
	case "endgroup":
		return emit("##[endgroup]")
	case "debug":
		if w.sink.debug() {
			return emit("##[debug]" + data)
		}
		return nil
	case "error", "warning", "notice":
		a := Annotation{Level: name, Message: data, Title: props["title"], File: props["file"]}
		a.Line, _ = strconv.Atoi(props["line"])
		a.EndLine, _ = strconv.Atoi(props["endline"])
		a.Col, _ = strconv.Atoi(props["col"])
		a.EndColumn, _ = strconv.Atoi(props["endcolumn"])
		w.sink.annotate(a)
		return emit("##[" + name + "]" + data)
	case "set-output":
		w.sink.setOutput(props["name"], data)
		return nil
	case "save-state":
		w.sink.saveState(props["name"], data)
		return nil
	case "echo":
		return nil
	case "set-env", "add-path":
		msg := "The `" + name + "` command is disabled. Use the GITHUB_ENV / GITHUB_PATH files instead."
		w.failed = append(w.failed, msg)
		w.sink.annotate(Annotation{Level: "error", Message: msg})
		return emit("##[error]" + msg)
	case "add-matcher", "remove-matcher":
		return emit("##[warning]Problem matchers (" + name + ") are not supported by Airlock; the command was not applied.")
	}
	_, err := w.out.Write(raw)
	return err
}

// parseCommand parses "::name k=v,k2=v2::data" (leading white space
// allowed) or "##[name k=v;k2=v2]data". Property names are lower-cased.
func parseCommand(line string) (name string, props map[string]string, data string, ok bool) {
	s := strings.TrimLeft(line, " \t")
	var head string
	legacy := false
	switch {
	case strings.HasPrefix(s, "::"):
		end := strings.Index(s[2:], "::")
		if end < 0 {
			return "", nil, "", false
		}
		head, data = s[2:2+end], s[4+end:]
	case strings.HasPrefix(s, "##["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", nil, "", false
		}
		head, data, legacy = s[3:end], s[end+1:], true
	default:
		return "", nil, "", false
	}
	name, rest, _ := strings.Cut(head, " ")
	if name == "" || strings.ContainsAny(name, "\t=") {
		return "", nil, "", false
	}
	props = map[string]string{}
	sep := ","
	if legacy {
		sep = ";"
	}
	for _, kv := range strings.Split(rest, sep) {
		k, v, found := strings.Cut(strings.TrimSpace(kv), "=")
		if found && k != "" {
			props[strings.ToLower(k)] = unescapeProperty(v)
		}
	}
	return strings.ToLower(name), props, unescapeData(data), true
}

var (
	dataUnescaper     = strings.NewReplacer("%25", "%", "%0D", "\r", "%0A", "\n")
	propertyUnescaper = strings.NewReplacer("%25", "%", "%0D", "\r", "%0A", "\n", "%3A", ":", "%2C", ",")
)

func unescapeData(s string) string     { return dataUnescaper.Replace(s) }
func unescapeProperty(s string) string { return propertyUnescaper.Replace(s) }
