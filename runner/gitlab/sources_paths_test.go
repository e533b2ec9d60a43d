package gitlab

import (
	"slices"
	"testing"
)

// GIT_SUBMODULE_PATHS reaches the checkout as its words (the checkout
// validates them).
func TestCheckoutSpecSubmodulePaths(t *testing.T) {
	r := &JobResponse{GitInfo: GitInfo{RepoURL: "https://gitlab.example/g/p.git", Ref: "main", SHA: "0123456789abcdef0123456789abcdef01234567"},
		Variables: []JobVariable{{Key: "GIT_SUBMODULE_STRATEGY", Value: "Recursive"}, {Key: "GIT_SUBMODULE_PATHS", Value: " lib  :(exclude)vendor/ext\n"}}}
	spec, ok := r.CheckoutSpec("")
	if !ok || spec.Submodules != "recursive" || !slices.Equal(spec.SubmodulePaths, []string{"lib", ":(exclude)vendor/ext"}) {
		t.Errorf("CheckoutSpec = %v, submodules %q, paths %q; want recursive and the two paths", ok, spec.Submodules, spec.SubmodulePaths)
	}
	if errs := r.checkSources(); len(errs) != 0 {
		t.Errorf("GIT_SUBMODULE_PATHS refused: %v", errs)
	}
}

// git_info.repo_object_format and GIT_FETCH_EXTRA_FLAGS reach the
// checkout (which validates them).
func TestCheckoutSpecFormatAndFetchFlags(t *testing.T) {
	r := &JobResponse{GitInfo: GitInfo{RepoURL: "https://gitlab.example/g/p.git", Ref: "main", RepoObjectFormat: "sha256",
		SHA: "3d4933c085a6511cfdaf182d95032cb40c3c1058f132edeacec164747f85adf4"},
		Variables: []JobVariable{{Key: "GIT_FETCH_EXTRA_FLAGS", Value: "--tags  --prune\n"}}}
	spec, ok := r.CheckoutSpec("")
	if !ok || spec.ObjectFormat != "sha256" || !slices.Equal(spec.FetchFlags, []string{"--tags", "--prune"}) {
		t.Errorf("CheckoutSpec = %v, format %q, fetch flags %q; want sha256 and --tags --prune", ok, spec.ObjectFormat, spec.FetchFlags)
	}
}

// GIT_CHECKOUT=false (any case) fetches without checking out; other
// values check out.
func TestCheckoutSpecNoCheckout(t *testing.T) {
	for v, want := range map[string]bool{"false": true, "FALSE": true, "true": false, "": false} {
		r := &JobResponse{GitInfo: GitInfo{RepoURL: "https://gitlab.example/g/p.git", Ref: "main", SHA: "0123456789abcdef0123456789abcdef01234567"},
			Variables: []JobVariable{{Key: "GIT_CHECKOUT", Value: v}}}
		spec, ok := r.CheckoutSpec("")
		if !ok || spec.NoCheckout != want || len(r.checkSources()) != 0 {
			t.Errorf("GIT_CHECKOUT=%q: NoCheckout %v, refusals %v; want %v and none", v, spec.NoCheckout, r.checkSources(), want)
		}
	}
}
