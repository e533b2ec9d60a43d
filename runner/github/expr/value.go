package expr

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// Values are Go values: nil (null), bool, float64, string, []any (array)
// and *Object (dictionary). FromGo converts other Go values.

// Object is a dictionary with case-insensitive keys that keeps the order
// and the case of its keys as first set.
type Object struct {
	keys []string
	vals []any
	idx  map[string]int // lower-cased key -> position
}

// NewObject returns an empty object.
func NewObject() *Object { return &Object{idx: map[string]int{}} }

// Set sets key to v (replacing a key that differs only in case).
func (o *Object) Set(key string, v any) {
	lk := strings.ToLower(key)
	if i, ok := o.idx[lk]; ok {
		o.vals[i] = v
		return
	}
	o.idx[lk] = len(o.keys)
	o.keys = append(o.keys, key)
	o.vals = append(o.vals, v)
}

// Get returns key's value (case-insensitive).
func (o *Object) Get(key string) (any, bool) {
	if o == nil {
		return nil, false
	}
	i, ok := o.idx[strings.ToLower(key)]
	if !ok {
		return nil, false
	}
	return o.vals[i], true
}

// Keys returns the keys in insertion order.
func (o *Object) Keys() []string {
	if o == nil {
		return nil
	}
	return append([]string(nil), o.keys...)
}

// Len returns the number of keys.
func (o *Object) Len() int {
	if o == nil {
		return 0
	}
	return len(o.keys)
}

// MarshalJSON writes the object with its keys in order.
func (o *Object) MarshalJSON() ([]byte, error) {
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		vb, err := json.Marshal(jsonable(o.vals[i]))
		if err != nil {
			return nil, err
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return []byte(b.String()), nil
}

func jsonable(v any) any {
	if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
		return nil
	}
	if a, ok := v.([]any); ok {
		out := make([]any, len(a))
		for i, x := range a {
			out[i] = jsonable(x)
		}
		return out
	}
	return v
}

// FromGo converts a Go value (maps, slices, strings, numbers, bools, nil)
// into an expression value.
func FromGo(v any) any {
	switch v := v.(type) {
	case nil, bool, string, float64, *Object:
		return v
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case json.Number:
		f, _ := v.Float64()
		return f
	case map[string]string:
		o := NewObject()
		for _, k := range sortedKeys(v) {
			o.Set(k, v[k])
		}
		return o
	case map[string]any:
		o := NewObject()
		for _, k := range sortedKeys(v) {
			o.Set(k, FromGo(v[k]))
		}
		return o
	case []string:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = x
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = FromGo(x)
		}
		return out
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// Truthy is GitHub's coercion to boolean: false, 0, -0, NaN, "" and null
// are false; everything else (arrays and objects included) is true.
func Truthy(v any) bool {
	switch v := v.(type) {
	case nil:
		return false
	case bool:
		return v
	case float64:
		return v != 0 && !math.IsNaN(v)
	case string:
		return v != ""
	}
	return true
}

// String is GitHub's coercion to string: null is "", booleans
// "true"/"false", numbers without a trailing ".0", arrays "Array" and
// objects "Object".
func String(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case bool:
		if v {
			return "true"
		}
		return "false"
	case float64:
		return numberString(v)
	case string:
		return v
	case []any:
		return "Array"
	}
	return "Object"
}

func numberString(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == math.Trunc(f) && math.Abs(f) < 1e15:
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// number is GitHub's coercion to number for comparisons.
func number(v any) float64 {
	switch v := v.(type) {
	case nil:
		return 0
	case bool:
		if v {
			return 1
		}
		return 0
	case float64:
		return v
	case string:
		s := strings.TrimSpace(v)
		if s == "" {
			return 0
		}
		if n, ok := parseNumber(s); ok {
			return n
		}
		return nan()
	}
	return nan()
}

func nan() float64      { return math.NaN() }
func inf(s int) float64 { return math.Inf(s) }
