package github

import (
	"fmt"
	"strings"
)

// KV pairs parsed from a GITHUB_ENV / GITHUB_OUTPUT / GITHUB_STATE file.
type kv struct{ key, value string }

// parseKeyValueFile parses NAME=value lines and NAME<<DELIM heredocs (the
// earlier of "=" and "<<" on a line decides). An empty name or delimiter
// or a heredoc without its closing delimiter is an error; blank lines are
// skipped.
func parseKeyValueFile(content string) ([]kv, error) {
	content = strings.ReplaceAll(content, "\r\n", "\n")
	lines := strings.Split(content, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var out []kv
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.TrimSpace(line) == "" {
			continue
		}
		eq := strings.Index(line, "=")
		hd := strings.Index(line, "<<")
		switch {
		case eq >= 0 && (hd < 0 || eq < hd):
			name := line[:eq]
			if name == "" {
				return nil, fmt.Errorf("line %d: empty name", i+1)
			}
			out = append(out, kv{name, line[eq+1:]})
		case hd >= 0:
			name, delim := line[:hd], line[hd+2:]
			if name == "" {
				return nil, fmt.Errorf("line %d: empty name", i+1)
			}
			if delim == "" {
				return nil, fmt.Errorf("line %d (%s): empty heredoc delimiter", i+1, name)
			}
			var val []string
			closed := false
			for i++; i < len(lines); i++ {
				if lines[i] == delim {
					closed = true
					break
				}
				val = append(val, lines[i])
			}
			if !closed {
				return nil, fmt.Errorf("%s: heredoc delimiter %q not found", name, clipText(delim))
			}
			out = append(out, kv{name, strings.Join(val, "\n")})
		default:
			return nil, fmt.Errorf("line %d: want NAME=value or NAME<<DELIMITER", i+1)
		}
	}
	return out, nil
}

// parsePathFile returns the directories of a GITHUB_PATH file, one a line.
func parsePathFile(content string) []string {
	var out []string
	for _, l := range strings.Split(strings.ReplaceAll(content, "\r\n", "\n"), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func clipText(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
