package expr

import (
	"errors"
	"fmt"
	"strings"
)

// Status is how the job went so far, for the status functions.
type Status struct {
	Failed    bool // an earlier step failed (failure())
	Cancelled bool // the job was cancelled (cancelled())
}

// Env is what an expression sees.
type Env struct {
	// Contexts by lower-cased name (github, env, vars, secrets, steps,
	// job, runner, matrix, strategy, needs, inputs); a missing one is null.
	Contexts map[string]any
	Status   Status
	// HashFiles returns hashFiles(patterns) (nil: hashFiles fails).
	HashFiles func(patterns []string) (string, error)
}

// ErrEval marks an evaluation error (as opposed to a parse error).
var ErrEval = errors.New("evaluating expression")

// Evaluate parses and evaluates src.
func Evaluate(src string, env *Env) (any, error) {
	n, err := Parse(src)
	if err != nil {
		return nil, err
	}
	return Eval(n, env)
}

// Eval evaluates a parsed expression.
func Eval(n Node, env *Env) (v any, err error) {
	if env == nil {
		env = &Env{}
	}
	v, err = eval(n, env)
	return normalize(v), err
}

// Condition evaluates a step condition with GitHub's rule: an empty
// condition is success(), one that calls no status function is
// success() && (condition).
func Condition(src string, env *Env) (bool, error) {
	if strings.TrimSpace(src) == "" {
		src = "success()"
	}
	n, err := Parse(src)
	if err != nil {
		return false, err
	}
	if !UsesStatus(n) {
		n = Binary{Op: "&&", X: Call{Name: "success"}, Y: n}
	}
	v, err := Eval(n, env)
	if err != nil {
		return false, err
	}
	return Truthy(v), nil
}

func eval(n Node, env *Env) (any, error) {
	switch n := n.(type) {
	case Literal:
		return n.Value, nil
	case Ident:
		return env.Contexts[n.Name], nil
	case Property:
		x, err := eval(n.X, env)
		if err != nil {
			return nil, err
		}
		return member(x, n.Name), nil
	case Index:
		x, err := eval(n.X, env)
		if err != nil {
			return nil, err
		}
		i, err := eval(n.Index, env)
		if err != nil {
			return nil, err
		}
		return index(x, i), nil
	case Star:
		x, err := eval(n.X, env)
		if err != nil {
			return nil, err
		}
		return star(x), nil
	case Not:
		x, err := eval(n.X, env)
		if err != nil {
			return nil, err
		}
		return !Truthy(x), nil
	case Binary:
		x, err := eval(n.X, env)
		if err != nil {
			return nil, err
		}
		switch n.Op {
		case "&&":
			if !Truthy(x) {
				return x, nil
			}
			return eval(n.Y, env)
		case "||":
			if Truthy(x) {
				return x, nil
			}
			return eval(n.Y, env)
		}
		y, err := eval(n.Y, env)
		if err != nil {
			return nil, err
		}
		return compare(n.Op, x, y), nil
	case Call:
		return call(n, env)
	}
	return nil, fmt.Errorf("%w: unknown node %T", ErrEval, n)
}

// filtered marks an array produced by the * filter: a property access on
// it maps over its elements.
type filtered []any

func member(x any, name string) any {
	switch x := x.(type) {
	case *Object:
		v, _ := x.Get(name)
		return v
	case filtered:
		var out filtered
		for _, e := range x {
			if o, ok := e.(*Object); ok {
				if v, ok := o.Get(name); ok {
					out = append(out, v)
				}
			}
		}
		return nonNilFiltered(out)
	}
	return nil
}

func nonNilFiltered(f filtered) any {
	if f == nil {
		return filtered{}
	}
	return f
}

func index(x, i any) any {
	switch x := x.(type) {
	case *Object:
		if s, ok := i.(string); ok {
			return member(x, s)
		}
		return member(x, String(i))
	case []any:
		return arrayIndex(x, i)
	case filtered:
		if s, ok := i.(string); ok {
			return member(x, s)
		}
		return arrayIndex([]any(x), i)
	}
	return nil
}

func arrayIndex(a []any, i any) any {
	f := number(i)
	if f != f || f < 0 || f >= float64(len(a)) {
		return nil
	}
	return a[int(f)]
}

func star(x any) any {
	switch x := x.(type) {
	case *Object:
		return filtered(append([]any(nil), x.vals...))
	case []any:
		return filtered(append([]any(nil), x...))
	case filtered:
		var out filtered
		for _, e := range x {
			switch e := e.(type) {
			case *Object:
				out = append(out, e.vals...)
			case []any:
				out = append(out, e...)
			}
		}
		return nonNilFiltered(out)
	}
	return filtered{}
}

// normalize turns a filtered array into a plain one at the edge.
func normalize(v any) any {
	if f, ok := v.(filtered); ok {
		return []any(f)
	}
	return v
}

func kind(v any) int {
	switch v.(type) {
	case nil:
		return 0
	case bool:
		return 1
	case float64:
		return 2
	case string:
		return 3
	}
	return 4 // array or object
}

// equal is GitHub's loose equality: values of different kinds are
// compared as numbers; strings case-insensitively; arrays and objects only
// to themselves.
func equal(x, y any) bool {
	kx, ky := kind(x), kind(y)
	if kx == 4 || ky == 4 {
		if kx != ky {
			return false
		}
		return sameRef(x, y)
	}
	if kx != ky {
		return number(x) == number(y)
	}
	switch x := x.(type) {
	case nil:
		return true
	case bool:
		return x == y.(bool)
	case float64:
		return x == y.(float64)
	case string:
		return strings.EqualFold(x, y.(string))
	}
	return false
}

func sameRef(x, y any) bool {
	switch x := x.(type) {
	case *Object:
		yo, ok := y.(*Object)
		return ok && x == yo
	case []any:
		ya, ok := y.([]any)
		return ok && len(x) == len(ya) && (len(x) == 0 || &x[0] == &ya[0])
	case filtered:
		ya, ok := y.(filtered)
		return ok && len(x) == len(ya) && (len(x) == 0 || &x[0] == &ya[0])
	}
	return false
}

func compare(op string, x, y any) bool {
	switch op {
	case "==":
		return equal(x, y)
	case "!=":
		return !equal(x, y)
	}
	kx, ky := kind(x), kind(y)
	if kx == 4 || ky == 4 {
		return false
	}
	var c int
	if kx == 3 && ky == 3 {
		c = strings.Compare(strings.ToLower(x.(string)), strings.ToLower(y.(string)))
	} else {
		a, b := number(x), number(y)
		if a != a || b != b {
			return false
		}
		switch {
		case a < b:
			c = -1
		case a > b:
			c = 1
		}
	}
	switch op {
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	case ">=":
		return c >= 0
	}
	return false
}
