package job

import (
	"net/url"
	"strings"
)

// RepoPath returns the repository path ("group/project") of a clone URL
// or git remote: https://host/group/project.git, ssh://git@host/group/project,
// scp-like git@host:group/project.git, or a bare group/project. Credentials
// in the URL are dropped; "" means the remote names no repository (also
// when the path holds white space or control characters).
func RepoPath(remote string) string {
	s := strings.TrimSpace(remote)
	var p string
	switch {
	case s == "":
		return ""
	case strings.Contains(s, "://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return ""
		}
		p = u.Path
	default:
		p = s
		if _, after, ok := strings.Cut(s, ":"); ok { // scp-like git@host:group/project
			p = after
		}
	}
	p = strings.Trim(strings.TrimSuffix(strings.Trim(p, "/"), ".git"), "/")
	if strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "" // no repository path has spaces or control characters
	}
	return p
}
