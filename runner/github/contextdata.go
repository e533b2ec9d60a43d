package github

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// ContextKind is the kind of a ContextData value, with GitHub's numbering
// (PipelineContextDataType).
type ContextKind int

// Context data kinds.
const (
	ContextString     ContextKind = 0
	ContextArray      ContextKind = 1
	ContextDictionary ContextKind = 2 // keys compared case-insensitively
	ContextBoolean    ContextKind = 3
	ContextNumber     ContextKind = 4
	// ContextCaseSensitiveDictionary is a dictionary whose keys keep
	// their case (env on Linux).
	ContextCaseSensitiveDictionary ContextKind = 5
)

// ContextData is one value of the job message's contextData (the github,
// needs, strategy, matrix, inputs, vars contexts). On the wire strings,
// booleans and numbers are bare JSON values, arrays {"t":1,"a":[...]} and
// dictionaries {"t":2|5,"d":[{"k":..,"v":..}]}; a nil *ContextData is null.
type ContextData struct {
	Kind  ContextKind
	Str   string
	Bool  bool
	Num   float64
	Items []*ContextData // ContextArray
	Pairs []ContextPair  // dictionaries, in the order sent
}

// ContextPair is one entry of a dictionary.
type ContextPair struct {
	Key   string       `json:"k"`
	Value *ContextData `json:"v"`
}

type wireContext struct {
	T *LenientInt    `json:"t"`
	A []*ContextData `json:"a,omitempty"`
	D []ContextPair  `json:"d,omitempty"`
	S *string        `json:"s,omitempty"`
	B *bool          `json:"b,omitempty"`
	N *float64       `json:"n,omitempty"`
}

// UnmarshalJSON decodes the PipelineContextData encoding.
func (c *ContextData) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	*c = ContextData{}
	if len(data) == 0 {
		return fmt.Errorf("decoding context data: empty")
	}
	switch data[0] {
	case '"':
		c.Kind = ContextString
		return json.Unmarshal(data, &c.Str)
	case 't', 'f':
		c.Kind = ContextBoolean
		return json.Unmarshal(data, &c.Bool)
	case '[':
		// Not GitHub's encoding, but unambiguous: a plain array.
		c.Kind = ContextArray
		return json.Unmarshal(data, &c.Items)
	case '{':
	case 'n':
		return fmt.Errorf("decoding context data: null must be a nil pointer")
	default:
		c.Kind = ContextNumber
		return json.Unmarshal(data, &c.Num)
	}
	var w wireContext
	if err := json.Unmarshal(data, &w); err != nil {
		return fmt.Errorf("decoding context data: %w", err)
	}
	if w.T == nil {
		return fmt.Errorf("decoding context data: object without \"t\"")
	}
	c.Kind = ContextKind(*w.T)
	switch c.Kind {
	case ContextString:
		if w.S != nil {
			c.Str = *w.S
		}
	case ContextArray:
		c.Items = w.A
	case ContextDictionary, ContextCaseSensitiveDictionary:
		c.Pairs = w.D
	case ContextBoolean:
		if w.B != nil {
			c.Bool = *w.B
		}
	case ContextNumber:
		if w.N != nil {
			c.Num = *w.N
		}
	default:
		return fmt.Errorf("decoding context data: unknown type %d", c.Kind)
	}
	return nil
}

// MarshalJSON writes the PipelineContextData encoding.
func (c *ContextData) MarshalJSON() ([]byte, error) {
	if c == nil {
		return []byte("null"), nil
	}
	switch c.Kind {
	case ContextString:
		return json.Marshal(c.Str)
	case ContextBoolean:
		return json.Marshal(c.Bool)
	case ContextNumber:
		return json.Marshal(c.Num)
	case ContextArray:
		t := LenientInt(c.Kind)
		return json.Marshal(wireContext{T: &t, A: c.Items})
	default:
		t := LenientInt(c.Kind)
		return json.Marshal(wireContext{T: &t, D: c.Pairs})
	}
}

// Get returns a dictionary's value for key (case-insensitive unless the
// dictionary is case-sensitive), or nil.
func (c *ContextData) Get(key string) *ContextData {
	if c == nil {
		return nil
	}
	for _, p := range c.Pairs {
		if p.Key == key || (c.Kind == ContextDictionary && strings.EqualFold(p.Key, key)) {
			return p.Value
		}
	}
	return nil
}

// String returns a scalar's text ("" for null, arrays and dictionaries).
func (c *ContextData) String() string {
	if c == nil {
		return ""
	}
	switch c.Kind {
	case ContextString:
		return c.Str
	case ContextBoolean:
		if c.Bool {
			return "true"
		}
		return "false"
	case ContextNumber:
		return formatNumber(c.Num)
	}
	return ""
}

// StringAt follows a path of dictionary keys and returns the scalar there.
func (c *ContextData) StringAt(path ...string) string {
	for _, k := range path {
		c = c.Get(k)
	}
	return c.String()
}

// Dict builds a dictionary from pairs of key and value (for tests and
// fakes that build messages).
func Dict(kv ...any) *ContextData {
	d := &ContextData{Kind: ContextDictionary}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Pairs = append(d.Pairs, ContextPair{Key: kv[i].(string), Value: toContext(kv[i+1])})
	}
	return d
}

func toContext(v any) *ContextData {
	switch v := v.(type) {
	case nil:
		return nil
	case *ContextData:
		return v
	case string:
		return &ContextData{Kind: ContextString, Str: v}
	case bool:
		return &ContextData{Kind: ContextBoolean, Bool: v}
	case int:
		return &ContextData{Kind: ContextNumber, Num: float64(v)}
	case float64:
		return &ContextData{Kind: ContextNumber, Num: v}
	case []any:
		a := &ContextData{Kind: ContextArray}
		for _, x := range v {
			a.Items = append(a.Items, toContext(x))
		}
		return a
	}
	panic(fmt.Sprintf("github.Dict: unsupported value %T", v))
}
