package expr

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

func testEnv() *Env {
	steps := NewObject()
	build := NewObject()
	out := NewObject()
	out.Set("version", "1.2.3")
	build.Set("outputs", out)
	build.Set("outcome", "success")
	steps.Set("build", build)
	test := NewObject()
	test.Set("outcome", "failure")
	test.Set("outputs", NewObject())
	steps.Set("my-test", test)
	gh := FromGo(map[string]any{
		"event_name": "push",
		"ref":        "refs/heads/main",
		"event": map[string]any{
			"commits": []any{
				map[string]any{"message": "fix: a", "author": map[string]any{"name": "ann"}},
				map[string]any{"message": "feat: b", "author": map[string]any{"name": "bob"}},
			},
			"labels": []any{"bug", "CI"},
		},
	})
	return &Env{
		Contexts: map[string]any{
			"github": gh,
			"env":    FromGo(map[string]string{"GREETING": "hello", "EMPTY": ""}),
			"steps":  steps,
			"matrix": FromGo(map[string]any{"os": "linux", "n": 3}),
		},
		HashFiles: func(p []string) (string, error) { return "h:" + strings.Join(p, "+"), nil },
	}
}

func TestEvaluate(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want any
	}{
		{"null", nil},
		{"true", true},
		{"FALSE", false},
		{"42", 42.0},
		{"-2.5", -2.5},
		{"0xff", 255.0},
		{"1e3", 1000.0},
		{"'it''s'", "it's"},
		{"github.event_name", "push"},
		{"GitHub.Event_Name", "push"},
		{"github['event_name']", "push"},
		{"github.nope", nil},
		{"github.nope.deeper", nil},
		{"steps.build.outputs.version", "1.2.3"},
		{"steps.my-test.outcome", "failure"},
		{"github.event.commits[1].author.name", "bob"},
		{"github.event.commits[5]", nil},
		{"github.event.commits.*.author.name", []any{"ann", "bob"}},
		{"github.event.commits[*].message", []any{"fix: a", "feat: b"}},
		{"!env.EMPTY", true},
		{"!!env.GREETING", true},
		{"env.GREETING && 'yes'", "yes"},
		{"env.EMPTY || 'default'", "default"},
		{"env.EMPTY && 'x'", ""},
		{"github.ref == 'REFS/HEADS/MAIN'", true},
		{"1 == '1'", true},
		{"'' == 0", true},
		{"null == 0", true},
		{"true == 1", true},
		{"'abc' == 1", false},
		{"matrix.n > 2", true},
		{"matrix.n <= 2", false},
		{"'b' > 'A'", true},
		{"'a' < 1", false},
		{"github.event == github.event", true},
		{"github.event == matrix", false},
		{"1 != 2", true},
		{"(1 == 1) && (2 > 1 || false)", true},
		{"contains('Hello World', 'WORLD')", true},
		{"contains(github.event.labels, 'ci')", true},
		{"contains(github.event.labels, 'nope')", false},
		{"contains(github.event.commits.*.author.name, 'ann')", true},
		{"startsWith(github.ref, 'refs/heads/')", true},
		{"endsWith('file.TXT', '.txt')", true},
		{"format('{0}-{1}-{0}', 'a', 1)", "a-1-a"},
		{"format('{{0}} is {0}', 'x')", "{0} is x"},
		{"join(github.event.labels)", "bug,CI"},
		{"join(github.event.labels, ' | ')", "bug | CI"},
		{"join('single')", "single"},
		{"toJSON(matrix)", "{\n  \"n\": 3,\n  \"os\": \"linux\"\n}"},
		{"toJSON('a<b')", `"a<b"`},
		{"fromJSON('{\"a\":[1,2]}').a[1]", 2.0},
		{"fromJSON('true')", true},
		{"fromJSON(toJSON(matrix)).os", "linux"},
		{"hashFiles('**/go.sum', 'x')", "h:**/go.sum+x"},
		{"success()", true},
		{"failure()", false},
		{"always()", true},
		{"cancelled()", false},
	} {
		got, err := Evaluate(tc.expr, testEnv())
		if err != nil {
			t.Errorf("Evaluate(%q): %v", tc.expr, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Evaluate(%q) = %#v, want %#v", tc.expr, got, tc.want)
		}
	}
}

func TestEvaluateErrors(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{"", "unexpected end"},
		{"'open", "unterminated string"},
		{"a ==", "unexpected end"},
		{"a = b", "unexpected character"},
		{"nosuch(1)", "unknown function"},
		{"contains('a')", "takes 2 arguments"},
		{"success(1)", "takes 0 arguments"},
		{"a.(b)", "property name"},
		{"a[1", "expected ']'"},
		{"(1", "expected ')'"},
		{"1 2", "unexpected"},
		{"0x", "invalid number"},
		{"format('{1}', 'a')", "without argument"},
		{"format('{x}')", "bad placeholder"},
		{"format('}')", "lone '}'"},
		{"fromJSON('{')", "fromJSON"},
		{"fromJSON('')", "empty input"},
		{strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100), "nested deeper"},
		{strings.Repeat("!", 100) + "1", "nested deeper"},
	} {
		_, err := Evaluate(tc.expr, testEnv())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Evaluate(%q) error = %v, want it to contain %q", tc.expr, err, tc.want)
		}
	}
	if _, err := Evaluate("hashFiles('x')", &Env{}); !errors.Is(err, ErrEval) {
		t.Errorf("hashFiles without a callback: %v, want ErrEval", err)
	}
}

func TestCondition(t *testing.T) {
	for _, tc := range []struct {
		cond   string
		status Status
		want   bool
	}{
		{"", Status{}, true},
		{"", Status{Failed: true}, false},
		{"", Status{Cancelled: true}, false},
		{"github.event_name == 'push'", Status{}, true},
		{"github.event_name == 'push'", Status{Failed: true}, false}, // implicit success() &&
		{"failure()", Status{Failed: true}, true},
		{"failure()", Status{}, false},
		{"always()", Status{Cancelled: true}, true},
		{"cancelled()", Status{Cancelled: true}, true},
		{"failure() && steps.my-test.outcome == 'failure'", Status{Failed: true}, true},
		{"!cancelled()", Status{Failed: true}, true},
		{"contains(format('{0}', failure()), 'true')", Status{Failed: true}, true},
		{"steps.build.outputs.version", Status{}, true},
	} {
		env := testEnv()
		env.Status = tc.status
		got, err := Condition(tc.cond, env)
		if err != nil {
			t.Errorf("Condition(%q): %v", tc.cond, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Condition(%q, %+v) = %v, want %v", tc.cond, tc.status, got, tc.want)
		}
	}
}

func TestTemplate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want any
	}{
		{"plain text", "plain text"},
		{"", ""},
		{"${{ matrix.n }}", 3.0},
		{"${{ matrix.n > 1 }}", true},
		{"v${{ steps.build.outputs.version }}-${{ matrix.os }}!", "v1.2.3-linux!"},
		{"${{ format('}}{0}', 'x') }}", "}x"},
		{"${{ 'a}}b' }}", "a}}b"},
		{"${{ github.nope }}x", "x"},
		{"${{ matrix }}", nil}, // checked separately: the object itself
	} {
		got, err := Template(tc.in, testEnv())
		if err != nil {
			t.Errorf("Template(%q): %v", tc.in, err)
			continue
		}
		if tc.want == nil {
			if _, ok := got.(*Object); !ok {
				t.Errorf("Template(%q) = %#v, want the object", tc.in, got)
			}
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Template(%q) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"${{ 1", "${{ }}", "a ${{ nosuch() }}"} {
		if _, err := Template(bad, testEnv()); err == nil {
			t.Errorf("Template(%q) succeeded", bad)
		}
	}
}

func TestString(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{nil, ""}, {true, "true"}, {3.0, "3"}, {-0.5, "-0.5"}, {1e20, "100000000000000000000"},
		{math.NaN(), "NaN"}, {math.Inf(1), "Infinity"}, {[]any{}, "Array"}, {NewObject(), "Object"},
	} {
		if got := String(tc.v); got != tc.want {
			t.Errorf("String(%#v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
