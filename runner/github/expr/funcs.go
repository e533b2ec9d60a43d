package expr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// maxResult bounds the strings format, join and toJSON build.
const maxResult = 1 << 20

func call(c Call, env *Env) (any, error) {
	switch c.Name {
	case "success":
		return !env.Status.Failed && !env.Status.Cancelled, nil
	case "failure":
		return env.Status.Failed, nil
	case "always":
		return true, nil
	case "cancelled":
		return env.Status.Cancelled, nil
	}
	args := make([]any, len(c.Args))
	for i, a := range c.Args {
		v, err := eval(a, env)
		if err != nil {
			return nil, err
		}
		args[i] = v
	}
	switch c.Name {
	case "contains":
		switch hay := args[0].(type) {
		case []any:
			return containsItem(hay, args[1]), nil
		case filtered:
			return containsItem(hay, args[1]), nil
		}
		return strings.Contains(strings.ToLower(String(args[0])), strings.ToLower(String(args[1]))), nil
	case "startswith":
		return strings.HasPrefix(strings.ToLower(String(args[0])), strings.ToLower(String(args[1]))), nil
	case "endswith":
		return strings.HasSuffix(strings.ToLower(String(args[0])), strings.ToLower(String(args[1]))), nil
	case "format":
		return format(String(args[0]), args[1:])
	case "join":
		sep := ","
		if len(args) > 1 {
			sep = String(args[1])
		}
		var items []any
		switch a := args[0].(type) {
		case []any:
			items = a
		case filtered:
			items = a
		default:
			return String(a), nil
		}
		var b strings.Builder
		for i, it := range items {
			if i > 0 {
				b.WriteString(sep)
			}
			b.WriteString(String(it))
			if b.Len() > maxResult {
				return nil, fmt.Errorf("%w: join() result longer than %d bytes", ErrEval, maxResult)
			}
		}
		return b.String(), nil
	case "tojson":
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(jsonable(normalize(args[0]))); err != nil {
			return nil, fmt.Errorf("%w: toJSON(): %v", ErrEval, err)
		}
		if buf.Len() > maxResult {
			return nil, fmt.Errorf("%w: toJSON() result longer than %d bytes", ErrEval, maxResult)
		}
		return strings.TrimSuffix(buf.String(), "\n"), nil
	case "fromjson":
		s := String(args[0])
		if strings.TrimSpace(s) == "" {
			return nil, fmt.Errorf("%w: fromJSON(): empty input", ErrEval)
		}
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%w: fromJSON(): %v", ErrEval, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("%w: fromJSON(): trailing data", ErrEval)
		}
		return fromJSON(v), nil
	case "hashfiles":
		if env.HashFiles == nil {
			return nil, fmt.Errorf("%w: hashFiles() is not available here", ErrEval)
		}
		pats := make([]string, len(args))
		for i, a := range args {
			pats[i] = String(a)
		}
		h, err := env.HashFiles(pats)
		if err != nil {
			return nil, fmt.Errorf("%w: hashFiles(): %v", ErrEval, err)
		}
		return h, nil
	}
	return nil, fmt.Errorf("%w: unknown function %s()", ErrEval, c.Name)
}

func containsItem(hay []any, item any) bool {
	for _, h := range hay {
		if equal(h, item) {
			return true
		}
	}
	return false
}

// fromJSON converts decoded JSON (objects keep their key order only as
// encoding/json gives them: sorted) into expression values.
func fromJSON(v any) any {
	switch v := v.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return nan()
		}
		return f
	case map[string]any:
		o := NewObject()
		for _, k := range sortedKeys(v) {
			o.Set(k, fromJSON(v[k]))
		}
		return o
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = fromJSON(x)
		}
		return out
	}
	return v
}

// format replaces {N} with the N-th argument; {{ and }} are literal braces.
func format(f string, args []any) (string, error) {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		c := f[i]
		switch c {
		case '{':
			if i+1 < len(f) && f[i+1] == '{' {
				b.WriteByte('{')
				i++
				continue
			}
			end := strings.IndexByte(f[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("%w: format(): unclosed '{' in %q", ErrEval, clip(f))
			}
			n, err := strconv.Atoi(f[i+1 : i+end])
			if err != nil || n < 0 {
				return "", fmt.Errorf("%w: format(): bad placeholder %q", ErrEval, f[i:i+end+1])
			}
			if n >= len(args) {
				return "", fmt.Errorf("%w: format(): placeholder {%d} without argument", ErrEval, n)
			}
			b.WriteString(String(args[n]))
			i += end
		case '}':
			if i+1 < len(f) && f[i+1] == '}' {
				b.WriteByte('}')
				i++
				continue
			}
			return "", fmt.Errorf("%w: format(): lone '}' in %q", ErrEval, clip(f))
		default:
			b.WriteByte(c)
		}
		if b.Len() > maxResult {
			return "", fmt.Errorf("%w: format() result longer than %d bytes", ErrEval, maxResult)
		}
	}
	return b.String(), nil
}
