package job

import (
	"reflect"
	"testing"
)

func TestServiceAliases(t *testing.T) {
	tests := map[string][]string{
		"tutum/wordpress:latest": {"tutum__wordpress", "tutum-wordpress"},
		"postgres:13":            {"postgres"},
		"registry.example.com:5000/group/sub/postgres:13": {"registry.example.com__group__sub__postgres", "registry.example.com-group-sub-postgres"},
		"mysql@sha256:0123abcd":                           {"mysql"},
		"airlock-test:svc":                                {"airlock-test"},
	}
	for in, want := range tests {
		if got := ServiceAliases(in); !reflect.DeepEqual(got, want) {
			t.Errorf("ServiceAliases(%q) = %q, want %q", in, got, want)
		}
	}
}
