// Package expr parses and evaluates GitHub Actions expressions, the text
// inside ${{ }} (https://docs.github.com/actions/reference/evaluate-expressions-in-workflows-and-actions).
//
// Why our own parser: the grammar is small and fixed (literals, context
// access with . [] and the * filter, ! < <= > >= == != && ||, function
// calls), and the part that matters — evaluation with GitHub's loose
// typing, case-insensitive comparison and status functions — no kept
// library offers without its object model: rhysd/actionlint parses but
// does not evaluate and would add ten modules (a yaml v4 release
// candidate, color, cron, shellwords, ...) to the runner for ~300 lines
// of parser; nektos/act evaluates, but over its own job model and with
// go-git in its dependency graph. A parse-only library would still leave
// us the evaluator, so the parser lives with it here, fuzzed
// (FuzzEvaluate) with a seed corpus in testdata.
package expr

import (
	"fmt"
	"strconv"
	"strings"
)

// Node is a parsed expression.
type Node interface{ node() }

type (
	// Literal is null, a boolean, a number or a string.
	Literal struct{ Value any }
	// Ident is a context name (github, env, ...).
	Ident struct{ Name string }
	// Property is X.Name.
	Property struct {
		X    Node
		Name string
	}
	// Index is X[Index].
	Index struct{ X, Index Node }
	// Star is X.* or X[*] (the object filter).
	Star struct{ X Node }
	// Not is !X.
	Not struct{ X Node }
	// Binary is X Op Y for comparisons, && and ||.
	Binary struct {
		Op   string
		X, Y Node
	}
	// Call is a function call.
	Call struct {
		Name string // lower case
		Args []Node
	}
)

func (Literal) node()  {}
func (Ident) node()    {}
func (Property) node() {}
func (Index) node()    {}
func (Star) node()     {}
func (Not) node()      {}
func (Binary) node()   {}
func (Call) node()     {}

// maxDepth bounds nesting so that hostile input cannot exhaust the stack.
const maxDepth = 64

// maxLen bounds an expression's length (GitHub's limit is 21,000).
const maxLen = 21000

type tokKind int

const (
	tEOF tokKind = iota
	tNum
	tStr
	tIdent
	tPunct // ( ) [ ] . , *
	tOp    // ! < <= > >= == != && ||
)

type token struct {
	kind tokKind
	text string
	num  float64
	pos  int
}

func lex(src string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(src) {
					return nil, fmt.Errorf("unterminated string at %d", i)
				}
				if src[j] == '\'' {
					if j+1 < len(src) && src[j+1] == '\'' {
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(src[j])
				j++
			}
			toks = append(toks, token{kind: tStr, text: b.String(), pos: i})
			i = j + 1
		case isDigit(c) || ((c == '-' || c == '+' || c == '.') && i+1 < len(src) && isDigit(src[i+1]) && !prevIsValue(toks)):
			j := i + 1
			for j < len(src) && (isIdentChar(src[j]) || src[j] == '.' || ((src[j] == '-' || src[j] == '+') && (src[j-1] == 'e' || src[j-1] == 'E'))) {
				j++
			}
			text := src[i:j]
			n, ok := parseNumber(text)
			if !ok {
				return nil, fmt.Errorf("invalid number %q at %d", text, i)
			}
			toks = append(toks, token{kind: tNum, text: text, num: n, pos: i})
			i = j
		case isIdentStart(c):
			j := i + 1
			for j < len(src) && isIdentChar(src[j]) {
				j++
			}
			toks = append(toks, token{kind: tIdent, text: src[i:j], pos: i})
			i = j
		case strings.IndexByte("()[].,*", c) >= 0:
			toks = append(toks, token{kind: tPunct, text: string(c), pos: i})
			i++
		default:
			two := ""
			if i+1 < len(src) {
				two = src[i : i+2]
			}
			switch two {
			case "<=", ">=", "==", "!=", "&&", "||":
				toks = append(toks, token{kind: tOp, text: two, pos: i})
				i += 2
				continue
			}
			if c == '!' || c == '<' || c == '>' {
				toks = append(toks, token{kind: tOp, text: string(c), pos: i})
				i++
				continue
			}
			return nil, fmt.Errorf("unexpected character %q at %d", c, i)
		}
	}
	return append(toks, token{kind: tEOF, pos: len(src)}), nil
}

// prevIsValue reports whether the previous token ends an operand, in which
// case a following '.' is property access, not a number.
func prevIsValue(toks []token) bool {
	if len(toks) == 0 {
		return false
	}
	t := toks[len(toks)-1]
	return t.kind == tIdent || t.kind == tNum || t.kind == tStr || (t.kind == tPunct && (t.text == ")" || t.text == "]" || t.text == "*"))
}

func parseNumber(s string) (float64, bool) {
	l := strings.ToLower(s)
	neg := false
	switch {
	case strings.HasPrefix(l, "-"):
		neg, l = true, l[1:]
	case strings.HasPrefix(l, "+"):
		l = l[1:]
	}
	var n float64
	if strings.HasPrefix(l, "0x") {
		u, err := strconv.ParseUint(l[2:], 16, 64)
		if err != nil {
			return 0, false
		}
		n = float64(u)
	} else if strings.HasPrefix(l, "0o") {
		u, err := strconv.ParseUint(l[2:], 8, 64)
		if err != nil {
			return 0, false
		}
		n = float64(u)
	} else {
		if strings.ContainsAny(l, "_xobp") || l == "" || strings.HasPrefix(l, "inf") || strings.HasPrefix(l, "nan") {
			return 0, false
		}
		f, err := strconv.ParseFloat(l, 64)
		if err != nil {
			return 0, false
		}
		n = f
	}
	if neg {
		n = -n
	}
	return n, true
}

func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool { return c == '_' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func isIdentChar(c byte) bool  { return isIdentStart(c) || isDigit(c) || c == '-' }

type parser struct {
	toks  []token
	i     int
	depth int
}

// Parse parses an expression (the text inside ${{ }}).
func Parse(src string) (Node, error) {
	if len(src) > maxLen {
		return nil, fmt.Errorf("parsing expression: longer than %d characters", maxLen)
	}
	toks, err := lex(src)
	if err != nil {
		return nil, fmt.Errorf("parsing expression %q: %w", clip(src), err)
	}
	p := &parser{toks: toks}
	n, err := p.or()
	if err == nil && p.peek().kind != tEOF {
		err = fmt.Errorf("unexpected %q at %d", p.peek().text, p.peek().pos)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing expression %q: %w", clip(src), err)
	}
	return n, nil
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}
func (p *parser) is(kind tokKind, text string) bool {
	t := p.peek()
	return t.kind == kind && t.text == text
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return fmt.Errorf("nested deeper than %d", maxDepth)
	}
	return nil
}

func (p *parser) binary(ops []string, sub func() (Node, error)) (Node, error) {
	x, err := sub()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		if t.kind != tOp || !contains(ops, t.text) {
			return x, nil
		}
		p.next()
		y, err := sub()
		if err != nil {
			return nil, err
		}
		x = Binary{Op: t.text, X: x, Y: y}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func (p *parser) or() (Node, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	return p.binary([]string{"||"}, p.and)
}
func (p *parser) and() (Node, error) { return p.binary([]string{"&&"}, p.equality) }
func (p *parser) equality() (Node, error) {
	return p.binary([]string{"==", "!="}, p.comparison)
}
func (p *parser) comparison() (Node, error) {
	return p.binary([]string{"<", "<=", ">", ">="}, p.unary)
}

func (p *parser) unary() (Node, error) {
	if p.is(tOp, "!") {
		p.next()
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		return Not{X: x}, nil
	}
	return p.postfix()
}

func (p *parser) postfix() (Node, error) {
	x, err := p.primary()
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.is(tPunct, "."):
			p.next()
			t := p.next()
			switch {
			case t.kind == tIdent:
				x = Property{X: x, Name: t.text}
			case t.kind == tPunct && t.text == "*":
				x = Star{X: x}
			default:
				return nil, fmt.Errorf("expected a property name after '.' at %d", t.pos)
			}
		case p.is(tPunct, "["):
			p.next()
			if p.is(tPunct, "*") {
				p.next()
				x = Star{X: x}
			} else {
				idx, err := p.or()
				if err != nil {
					return nil, err
				}
				x = Index{X: x, Index: idx}
			}
			if t := p.next(); t.kind != tPunct || t.text != "]" {
				return nil, fmt.Errorf("expected ']' at %d", t.pos)
			}
		default:
			return x, nil
		}
	}
}

func (p *parser) primary() (Node, error) {
	t := p.next()
	switch t.kind {
	case tNum:
		return Literal{Value: t.num}, nil
	case tStr:
		return Literal{Value: t.text}, nil
	case tIdent:
		if p.is(tPunct, "(") {
			p.next()
			c := Call{Name: strings.ToLower(t.text)}
			if !p.is(tPunct, ")") {
				for {
					a, err := p.or()
					if err != nil {
						return nil, err
					}
					c.Args = append(c.Args, a)
					if p.is(tPunct, ",") {
						p.next()
						continue
					}
					break
				}
			}
			if t := p.next(); t.kind != tPunct || t.text != ")" {
				return nil, fmt.Errorf("expected ')' at %d", t.pos)
			}
			return c, checkArity(c)
		}
		switch strings.ToLower(t.text) {
		case "null":
			return Literal{Value: nil}, nil
		case "true":
			return Literal{Value: true}, nil
		case "false":
			return Literal{Value: false}, nil
		case "nan":
			return Literal{Value: nan()}, nil
		case "infinity":
			return Literal{Value: inf(1)}, nil
		}
		return Ident{Name: strings.ToLower(t.text)}, nil
	case tPunct:
		if t.text == "(" {
			x, err := p.or()
			if err != nil {
				return nil, err
			}
			if t := p.next(); t.kind != tPunct || t.text != ")" {
				return nil, fmt.Errorf("expected ')' at %d", t.pos)
			}
			return x, nil
		}
	case tEOF:
		return nil, fmt.Errorf("unexpected end of expression")
	}
	return nil, fmt.Errorf("unexpected %q at %d", t.text, t.pos)
}

// arity: function name -> min, max (-1 = unbounded) arguments.
var arity = map[string][2]int{
	"contains": {2, 2}, "startswith": {2, 2}, "endswith": {2, 2},
	"format": {1, -1}, "join": {1, 2}, "tojson": {1, 1}, "fromjson": {1, 1},
	"hashfiles": {1, -1},
	"success":   {0, 0}, "failure": {0, 0}, "always": {0, 0}, "cancelled": {0, 0},
}

func checkArity(c Call) error {
	a, ok := arity[c.Name]
	if !ok {
		return fmt.Errorf("unknown function %s()", c.Name)
	}
	if len(c.Args) < a[0] || (a[1] >= 0 && len(c.Args) > a[1]) {
		return fmt.Errorf("%s() takes %s arguments, got %d", c.Name, arityText(a), len(c.Args))
	}
	return nil
}

func arityText(a [2]int) string {
	switch {
	case a[0] == a[1]:
		return strconv.Itoa(a[0])
	case a[1] < 0:
		return "at least " + strconv.Itoa(a[0])
	}
	return fmt.Sprintf("%d to %d", a[0], a[1])
}

// UsesStatus reports whether n calls a status function (success, failure,
// always, cancelled). A condition that does not is evaluated as
// success() && (condition).
func UsesStatus(n Node) bool {
	switch n := n.(type) {
	case Call:
		switch n.Name {
		case "success", "failure", "always", "cancelled":
			return true
		}
		for _, a := range n.Args {
			if UsesStatus(a) {
				return true
			}
		}
	case Property:
		return UsesStatus(n.X)
	case Index:
		return UsesStatus(n.X) || UsesStatus(n.Index)
	case Star:
		return UsesStatus(n.X)
	case Not:
		return UsesStatus(n.X)
	case Binary:
		return UsesStatus(n.X) || UsesStatus(n.Y)
	}
	return false
}
