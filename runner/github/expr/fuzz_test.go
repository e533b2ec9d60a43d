package expr

import (
	"testing"
)

// FuzzEvaluate checks that no input makes the parser or the evaluator
// panic or loop, and that what parses evaluates deterministically.
func FuzzEvaluate(f *testing.F) {
	for _, s := range []string{
		"success() && (github.ref == 'refs/heads/main')",
		"format('echo {0} {{1}}', secrets.X)",
		"github.event.commits.*.author.name[0]",
		"fromJSON('{\"a\":[1,{\"b\":null}]}').a[1].b",
		"contains(toJSON(matrix), 'os') || !cancelled()",
		"0x1F >= -1.5e3",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		env := testEnv()
		n, err := Parse(s)
		if err != nil {
			return
		}
		v1, err1 := Eval(n, env)
		v2, err2 := Eval(n, env)
		if (err1 == nil) != (err2 == nil) || String(v1) != String(v2) {
			t.Fatalf("Eval(%q) not deterministic: %v/%v, %v/%v", s, v1, err1, v2, err2)
		}
		_, _ = Template("x ${{ "+s+" }} y", env)
		_, _ = Condition(s, env)
	})
}
