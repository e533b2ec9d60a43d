package github

import (
	"bytes"
	"regexp"
	"sync"
)

// maxJobLog bounds the job log kept for upload; beyond it the log is cut
// with a note (the live step logs are cut the same way).
const maxJobLog = 64 << 20

// stepHeader is the line the runner writes when a step starts
// (runner.execution: ">>> step NAME" in bold cyan).
var stepHeader = regexp.MustCompile(`^\x1b\[36;1m>>> step (.+?)\x1b\[0;m\r?$`)

// stepLog is one finished part of the log: a step's (name set) or what
// came before the first step (name "").
type stepLog struct {
	name string
	data []byte
}

// logSplitter receives the job's masked output, keeps the whole job log
// and cuts it into step logs at the runner's step headers, handing each
// finished part to emit (called without the lock held, in order).
type logSplitter struct {
	mu      sync.Mutex
	job     bytes.Buffer
	cut     bool
	partial []byte
	cur     stepLog
	started bool
	emit    func(stepLog, string) // finished part, name of the step starting ("" at the end)
	line    func([]byte)          // every complete line but step headers, if set
}

func (l *logSplitter) Write(p []byte) (int, error) {
	l.mu.Lock()
	var events []func()
	if l.job.Len()+len(p) <= maxJobLog {
		l.job.Write(p)
	} else if !l.cut {
		l.cut = true
		l.job.WriteString("\n[log truncated: it exceeded 64 MiB]\n")
	}
	data := append(l.partial, p...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := data[:i+1]
		data = data[i+1:]
		if m := stepHeader.FindSubmatch(bytes.TrimSuffix(line, []byte("\n"))); m != nil {
			done := l.cur
			next := string(m[1])
			emit := l.emit
			events = append(events, func() { emit(done, next) })
			l.cur = stepLog{name: next}
			l.started = true
		} else if l.line != nil {
			ln, f := append([]byte(nil), line...), l.line
			events = append(events, func() { f(ln) })
		}
		if len(l.cur.data)+len(line) <= maxJobLog {
			l.cur.data = append(l.cur.data, line...)
		}
	}
	l.partial = append([]byte(nil), data...)
	l.mu.Unlock()
	for _, e := range events {
		e()
	}
	return len(p), nil
}

// finish hands over the last part and returns the whole job log.
func (l *logSplitter) finish() []byte {
	l.mu.Lock()
	if len(l.partial) > 0 {
		l.cur.data = append(l.cur.data, l.partial...)
		l.partial = nil
	}
	done := l.cur
	l.cur = stepLog{}
	emit := l.emit
	out := append([]byte(nil), l.job.Bytes()...)
	l.mu.Unlock()
	if emit != nil {
		emit(done, "")
	}
	return out
}
