package checkout

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// submoduleFlags are the GIT_SUBMODULE_UPDATE_FLAGS accepted (host git
// runs them: nothing that names a path or a command).
var submoduleFlags = map[string]bool{
	"--remote": true, "--recommend-shallow": true, "--no-recommend-shallow": true,
	"--single-branch": true, "--no-single-branch": true, "--checkout": true, "--force": true,
	"--no-fetch": true,
}

// maxSubmoduleNesting bounds recursive submodules.
const maxSubmoduleNesting = 8

// submodules checks out the submodules as GIT_SUBMODULE_STRATEGY says,
// each level only after its URLs were checked to be on the repository's
// own host (the job token authenticates them there, and the runner host
// reaches no other host for a job).
func submodules(ctx context.Context, spec Spec, base *url.URL, g *gitRunner) error {
	switch spec.Submodules {
	case "", "none":
		return nil
	case "normal", "recursive":
	default:
		return fmt.Errorf("checking out sources: GIT_SUBMODULE_STRATEGY %q: must be none, normal or recursive", spec.Submodules)
	}
	update := []string{"submodule", "update", "--init"}
	depth := spec.SubmoduleDepth
	if depth == 0 {
		depth = spec.Depth
	}
	if depth > 0 {
		update = append(update, "--depth", strconv.Itoa(depth))
	}
	for i := 0; i < len(spec.SubmoduleFlags); i++ {
		f := spec.SubmoduleFlags[i]
		switch {
		case submoduleFlags[f]:
			update = append(update, f)
		case f == "--jobs" && i+1 < len(spec.SubmoduleFlags):
			n, err := strconv.Atoi(spec.SubmoduleFlags[i+1])
			if err != nil || n < 1 {
				return fmt.Errorf("checking out sources: GIT_SUBMODULE_UPDATE_FLAGS: --jobs wants a number")
			}
			update = append(update, "--jobs", strconv.Itoa(n))
			i++
		default:
			return fmt.Errorf("checking out sources: GIT_SUBMODULE_UPDATE_FLAGS %q is not supported by Airlock", f)
		}
	}
	sel, err := parseSubmodulePaths(spec.SubmodulePaths)
	if err != nil {
		return err
	}
	return submoduleLevel(ctx, spec, base, g, g.dir, update, 0, sel)
}

// submoduleSelection is GIT_SUBMODULE_PATHS parsed: paths to include
// (none: all) and paths to exclude, each cleaned and relative.
type submoduleSelection struct{ include, exclude []string }

func parseSubmodulePaths(specs []string) (*submoduleSelection, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	sel := &submoduleSelection{}
	for _, raw := range specs {
		p, exclude := raw, false
		switch {
		case strings.HasPrefix(p, ":(exclude)"):
			p, exclude = strings.TrimPrefix(p, ":(exclude)"), true
		case strings.HasPrefix(p, ":!"), strings.HasPrefix(p, ":^"):
			p, exclude = p[2:], true
		case strings.HasPrefix(p, ":"):
			return nil, fmt.Errorf("checking out sources: GIT_SUBMODULE_PATHS %q: of git's pathspec magic only :(exclude) is supported by Airlock", raw)
		}
		clean := path.Clean(strings.TrimSuffix(p, "/"))
		if p == "" || path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "../") || strings.HasPrefix(p, "-") || strings.ContainsAny(p, "*?[") {
			return nil, fmt.Errorf("checking out sources: GIT_SUBMODULE_PATHS %q: want a path inside the repository (no wildcards)", raw)
		}
		if exclude {
			sel.exclude = append(sel.exclude, clean)
		} else {
			sel.include = append(sel.include, clean)
		}
	}
	return sel, nil
}

// chooses reports whether the submodule at p is selected.
func (s *submoduleSelection) chooses(p string) bool {
	if s == nil {
		return true
	}
	p = path.Clean(p)
	under := func(list []string) bool {
		for _, l := range list {
			if l == "." || p == l || strings.HasPrefix(p, l+"/") {
				return true
			}
		}
		return false
	}
	return (len(s.include) == 0 || under(s.include)) && !under(s.exclude)
}

// submoduleLevel checks out dir's submodules (those sel chooses; nil:
// all) and, with the recursive strategy, theirs.
func submoduleLevel(ctx context.Context, spec Spec, base *url.URL, g *gitRunner, dir string, update []string, level int, sel *submoduleSelection) error {
	if level > maxSubmoduleNesting {
		return fmt.Errorf("checking out sources: submodules nested deeper than %d", maxSubmoduleNesting)
	}
	all, allURLs, err := gitmodules(dir)
	if err != nil || len(all) == 0 {
		return err
	}
	var paths, urls []string
	for i, p := range all {
		if sel.chooses(p) {
			paths, urls = append(paths, p), append(urls, allURLs[i])
		}
	}
	if len(paths) == 0 {
		fmt.Fprintf(g.out, "GIT_SUBMODULE_PATHS chooses none of the submodules in %s\n", relOr(g.dir, dir))
		return nil
	}
	for i, raw := range urls {
		u, err := resolveSubmodule(base, raw)
		if err != nil || !strings.EqualFold(u.Host, base.Host) || (u.Scheme != "https" && u.Scheme != "http") {
			return fmt.Errorf("checking out sources: submodule %s (%s) is not on %s: Airlock fetches submodules from the repository's own GitLab only", paths[i], redact(raw), base.Host)
		}
	}
	sg := &gitRunner{bin: g.bin, dir: dir, out: g.out, env: g.env}
	fmt.Fprintf(g.out, "Updating submodules in %s\n", relOr(g.dir, dir))
	// Only the chosen ones, by path: "--" ends the options, and the paths
	// are .gitmodules' own (none starts with "-").
	if err := sg.run(ctx, append([]string{"submodule", "sync", "--quiet", "--"}, paths...)...); err != nil {
		return err
	}
	if err := sg.run(ctx, append(append(append([]string(nil), update...), "--"), paths...)...); err != nil {
		return err
	}
	if spec.Submodules != "recursive" {
		return nil
	}
	for _, p := range paths {
		sub := filepath.Join(dir, filepath.FromSlash(path.Clean(p)))
		if err := submoduleLevel(ctx, spec, base, g, sub, update, level+1, nil); err != nil {
			return err
		}
	}
	return nil
}

// gitmodules reads the submodule paths and URLs of dir's .gitmodules.
func gitmodules(dir string) (paths, urls []string, err error) {
	cmd := exec.Command("git", "config", "--file", filepath.Join(dir, ".gitmodules"), "--null", "--get-regexp", `^submodule\..*\.(path|url)$`)
	cmd.Env = []string{"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "HOME=/nonexistent"}
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 {
			return nil, nil, nil // no .gitmodules or no entries
		}
		return nil, nil, fmt.Errorf("checking out sources: reading .gitmodules: %w", err)
	}
	byName := map[string][2]string{}
	var order []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(data, 0); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), "\n")
		name := strings.TrimPrefix(key, "submodule.")
		kind := name[strings.LastIndexByte(name, '.')+1:]
		name = name[:strings.LastIndexByte(name, '.')]
		e, seen := byName[name]
		if !seen {
			order = append(order, name)
		}
		if kind == "path" {
			e[0] = val
		} else {
			e[1] = val
		}
		byName[name] = e
	}
	for _, n := range order {
		e := byName[n]
		if e[0] == "" || e[1] == "" || strings.HasPrefix(e[0], "-") || strings.HasPrefix(e[1], "-") {
			return nil, nil, fmt.Errorf("checking out sources: .gitmodules entry %q lacks a usable path or url", n)
		}
		paths, urls = append(paths, e[0]), append(urls, e[1])
	}
	return paths, urls, nil
}

// resolveSubmodule resolves a submodule URL, relative ones (../x.git)
// against the repository's.
func resolveSubmodule(base *url.URL, raw string) (*url.URL, error) {
	if strings.HasPrefix(raw, "./") || strings.HasPrefix(raw, "../") {
		b := *base
		b.Path = strings.TrimSuffix(b.Path, "/") + "/"
		return b.Parse(raw)
	}
	return url.Parse(raw)
}

func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		u.User = nil
		return u.String()
	}
	return raw
}

func relOr(base, p string) string {
	if r, err := filepath.Rel(base, p); err == nil {
		return r
	}
	return p
}
