package github

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// TokenType is the kind of a TemplateToken, with GitHub's numbering
// (DTObjectTemplating TokenType).
type TokenType int

// Template token types.
const (
	TokenString     TokenType = 0
	TokenSequence   TokenType = 1
	TokenMapping    TokenType = 2
	TokenExpression TokenType = 3 // text inside ${{ }}; mixed text arrives as one format() call
	TokenInsert     TokenType = 4 // ${{ insert }}
	TokenBoolean    TokenType = 5
	TokenNumber     TokenType = 6
	TokenNull       TokenType = 7
)

// TemplateToken is one node of the workflow template the server sends for
// the fields the runner evaluates itself (step inputs and env, job env,
// defaults, outputs, containers). On the wire a token is either a bare
// JSON literal (string, bool, number, null) or an object
// {"type", "lit"|"expr"|"directive"|"bool"|"num"|"seq"|"map", "file",
// "line", "col"}; mapping entries use PascalCase "Key"/"Value".
// A nil *TemplateToken is a null.
type TemplateToken struct {
	Type TokenType
	Lit  string  // TokenString
	Expr string  // TokenExpression; the directive of a TokenInsert
	Bool bool    // TokenBoolean
	Num  float64 // TokenNumber
	Seq  []*TemplateToken
	Map  []MapEntry
	// Position in the workflow file (0 when the server sent none).
	File, Line, Col int
}

// MapEntry is one key/value pair of a mapping token.
type MapEntry struct {
	Key   *TemplateToken `json:"Key"`
	Value *TemplateToken `json:"Value"`
}

// wireToken is the object form of a token.
type wireToken struct {
	Type      *LenientInt      `json:"type"`
	Lit       *string          `json:"lit,omitempty"`
	Expr      *string          `json:"expr,omitempty"`
	Directive *string          `json:"directive,omitempty"`
	Bool      *bool            `json:"bool,omitempty"`
	Num       *float64         `json:"num,omitempty"`
	Seq       []*TemplateToken `json:"seq,omitempty"`
	Map       []MapEntry       `json:"map,omitempty"`
	File      LenientInt       `json:"file,omitempty"`
	Line      LenientInt       `json:"line,omitempty"`
	Col       LenientInt       `json:"col,omitempty"`
}

// UnmarshalJSON decodes both encodings of a token.
func (t *TemplateToken) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	*t = TemplateToken{}
	if len(data) == 0 {
		return fmt.Errorf("decoding template token: empty")
	}
	switch data[0] {
	case 'n':
		t.Type = TokenNull
		return nil
	case 't', 'f':
		t.Type = TokenBoolean
		return json.Unmarshal(data, &t.Bool)
	case '"':
		t.Type = TokenString
		return json.Unmarshal(data, &t.Lit)
	case '{':
	case '[':
		return fmt.Errorf("decoding template token: a bare array is not a token")
	default:
		t.Type = TokenNumber
		return json.Unmarshal(data, &t.Num)
	}
	var w wireToken
	if err := json.Unmarshal(data, &w); err != nil {
		return fmt.Errorf("decoding template token: %w", err)
	}
	if w.Type != nil {
		t.Type = TokenType(*w.Type)
	} else {
		// No type: infer it from the payload field present.
		switch {
		case w.Expr != nil:
			t.Type = TokenExpression
		case w.Directive != nil:
			t.Type = TokenInsert
		case w.Seq != nil:
			t.Type = TokenSequence
		case w.Map != nil:
			t.Type = TokenMapping
		case w.Bool != nil:
			t.Type = TokenBoolean
		case w.Num != nil:
			t.Type = TokenNumber
		}
	}
	t.File, t.Line, t.Col = int(w.File), int(w.Line), int(w.Col)
	switch t.Type {
	case TokenString:
		if w.Lit != nil {
			t.Lit = *w.Lit
		}
	case TokenSequence:
		t.Seq = w.Seq
	case TokenMapping:
		t.Map = w.Map
		for i, e := range t.Map {
			if e.Key == nil {
				return fmt.Errorf("decoding template token: mapping entry %d has no key", i)
			}
		}
	case TokenExpression:
		if w.Expr == nil {
			return fmt.Errorf("decoding template token: expression without expr")
		}
		t.Expr = *w.Expr
	case TokenInsert:
		if w.Directive != nil {
			t.Expr = *w.Directive
		}
	case TokenBoolean:
		if w.Bool != nil {
			t.Bool = *w.Bool
		}
	case TokenNumber:
		if w.Num != nil {
			t.Num = *w.Num
		}
	case TokenNull:
	default:
		return fmt.Errorf("decoding template token: unknown type %d", t.Type)
	}
	return nil
}

// MarshalJSON writes the object form (the form the server sends).
func (t *TemplateToken) MarshalJSON() ([]byte, error) {
	if t == nil {
		return []byte("null"), nil
	}
	typ := LenientInt(t.Type)
	w := wireToken{Type: &typ, File: LenientInt(t.File), Line: LenientInt(t.Line), Col: LenientInt(t.Col)}
	switch t.Type {
	case TokenString:
		w.Lit = &t.Lit
	case TokenSequence:
		w.Seq = t.Seq
		if w.Seq == nil {
			w.Seq = []*TemplateToken{}
		}
	case TokenMapping:
		w.Map = t.Map
		if w.Map == nil {
			w.Map = []MapEntry{}
		}
	case TokenExpression:
		w.Expr = &t.Expr
	case TokenInsert:
		w.Directive = &t.Expr
	case TokenBoolean:
		w.Bool = &t.Bool
	case TokenNumber:
		w.Num = &t.Num
	}
	return json.Marshal(w)
}

// Literal returns the token's text when it is a string, bool or number
// literal (ok false for expressions, sequences, mappings and null).
func (t *TemplateToken) Literal() (string, bool) {
	if t == nil {
		return "", false
	}
	switch t.Type {
	case TokenString:
		return t.Lit, true
	case TokenBoolean:
		if t.Bool {
			return "true", true
		}
		return "false", true
	case TokenNumber:
		return formatNumber(t.Num), true
	}
	return "", false
}

// Template returns a scalar token as template text: a literal as itself
// (with any "${{" escaped as an expression so that it stays literal), an
// expression as "${{ expr }}". ok is false for sequences and mappings.
func (t *TemplateToken) Template() (string, bool) {
	if t == nil || t.Type == TokenNull {
		return "", true
	}
	if t.Type == TokenExpression {
		return "${{ " + t.Expr + " }}", true
	}
	s, ok := t.Literal()
	if !ok {
		return "", false
	}
	if strings.Contains(s, "${{") {
		return "${{ '" + strings.ReplaceAll(s, "'", "''") + "' }}", true
	}
	return s, true
}

// Get returns the value of key in a mapping token (keys compared
// case-insensitively, as the runner does), or nil.
func (t *TemplateToken) Get(key string) *TemplateToken {
	if t == nil || t.Type != TokenMapping {
		return nil
	}
	for _, e := range t.Map {
		if k, ok := e.Key.Literal(); ok && strings.EqualFold(k, key) {
			return e.Value
		}
	}
	return nil
}

func formatNumber(f float64) string {
	b, _ := json.Marshal(f)
	return string(b)
}
