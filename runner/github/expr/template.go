package expr

import (
	"fmt"
	"strings"
)

// Template evaluates text with embedded ${{ expr }} parts. Text that is
// exactly one expression yields the expression's value (a boolean stays a
// boolean, an object an object); otherwise the parts are converted to
// strings and joined.
func Template(s string, env *Env) (any, error) {
	parts, err := splitTemplate(s)
	if err != nil {
		return nil, err
	}
	if len(parts) == 1 && parts[0].expr {
		v, err := Evaluate(parts[0].text, env)
		return normalize(v), err
	}
	var b strings.Builder
	for _, p := range parts {
		if !p.expr {
			b.WriteString(p.text)
			continue
		}
		v, err := Evaluate(p.text, env)
		if err != nil {
			return nil, err
		}
		b.WriteString(String(normalize(v)))
		if b.Len() > maxResult {
			return nil, fmt.Errorf("%w: template result longer than %d bytes", ErrEval, maxResult)
		}
	}
	return b.String(), nil
}

// TemplateString is Template converted to a string.
func TemplateString(s string, env *Env) (string, error) {
	v, err := Template(s, env)
	if err != nil {
		return "", err
	}
	return String(v), nil
}

// HasExpression reports whether s contains ${{.
func HasExpression(s string) bool { return strings.Contains(s, "${{") }

type part struct {
	text string
	expr bool
}

// splitTemplate cuts s into literal text and expressions; "}}" inside a
// string literal of an expression does not end it.
func splitTemplate(s string) ([]part, error) {
	var parts []part
	for {
		i := strings.Index(s, "${{")
		if i < 0 {
			if s != "" || len(parts) == 0 {
				parts = append(parts, part{text: s})
			}
			return parts, nil
		}
		if i > 0 {
			parts = append(parts, part{text: s[:i]})
		}
		rest := s[i+3:]
		end, inStr := -1, false
		for j := 0; j < len(rest); j++ {
			switch {
			case rest[j] == '\'':
				inStr = !inStr // '' inside a string toggles twice
			case !inStr && rest[j] == '}' && j+1 < len(rest) && rest[j+1] == '}':
				end = j
			}
			if end >= 0 {
				break
			}
		}
		if end < 0 {
			return nil, fmt.Errorf("parsing template %q: ${{ without }}", clip(s))
		}
		e := strings.TrimSpace(rest[:end])
		if e == "" {
			return nil, fmt.Errorf("parsing template %q: empty ${{ }}", clip(s))
		}
		parts = append(parts, part{text: e, expr: true})
		s = rest[end+2:]
	}
}

// CheckTemplate parses every ${{ }} of s without evaluating it.
func CheckTemplate(s string) error {
	parts, err := splitTemplate(s)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if p.expr {
			if _, err := Parse(p.text); err != nil {
				return err
			}
		}
	}
	return nil
}
