package job

import "strings"

// ServiceAliases are the names GitLab derives from a service image: tag,
// digest and registry port dropped, "/" replaced by "__", and by "-" as a
// second name when that differs.
func ServiceAliases(image string) []string {
	name := image
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.Contains(name[i:], "/") {
		name = name[:i]
	}
	if first, rest, ok := strings.Cut(name, "/"); ok {
		if host, _, hasPort := strings.Cut(first, ":"); hasPort {
			name = host + "/" + rest
		}
	}
	a := strings.ReplaceAll(name, "/", "__")
	out := []string{a}
	if b := strings.ReplaceAll(name, "/", "-"); b != a {
		out = append(out, b)
	}
	return out
}

// ValidHostName: letters, digits, '-', '_', '.'; what /etc/hosts takes.
func ValidHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}
