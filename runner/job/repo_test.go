package job

import "testing"

func TestRepoPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://gitlab.test/group/project.git", "group/project"},
		{"https://gitlab-ci-token:secret@gitlab.test/group/sub/project.git", "group/sub/project"},
		{"https://gitlab.test/group/project", "group/project"},
		{"https://gitlab.test/group/project.git/", "group/project"},
		{"ssh://git@gitlab.test:2222/group/project.git", "group/project"},
		{"git@github.test:owner/repo.git", "owner/repo"},
		{"  owner/repo\n", "owner/repo"},
		{"https:///nohost", ""},
		{"", ""},
		{"not a url", ""},
		{"https://gitlab.test/", ""},
	}
	for _, tc := range tests {
		if got := RepoPath(tc.in); got != tc.want {
			t.Errorf("RepoPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
