package checkout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// cacheRepo is the per-project bare repository GIT_STRATEGY fetch keeps
// on the host, so that a job's fetch only transfers what is new: the
// remote is fetched into it (with the job token), then the job's fresh
// workspace fetches from it locally. Only the runner's git writes it;
// objects are content-addressed, and the job's checkout is by commit id.
func cacheRepo(root, remote string) string {
	h := sha256.Sum256([]byte(remote))
	return filepath.Join(root, hex.EncodeToString(h[:12])+".git")
}

// mirrorRefspecs keeps the remote's ref names in the cache (+A:B -> +A:A),
// so that the workspace fetches from the cache with the job's refspecs.
func mirrorRefspecs(refspecs []string) []string {
	out := make([]string, 0, len(refspecs))
	for _, rs := range refspecs {
		src, _, _ := strings.Cut(strings.TrimPrefix(rs, "+"), ":")
		out = append(out, "+"+src+":"+src)
	}
	return out
}

// updateCache fetches refspecs (and sha when they do not bring it) from
// the remote into the project's cache repository and returns its path.
// Jobs of one project take turns (an exclusive lock on the repository).
func updateCache(ctx context.Context, spec Spec, remote string, env []string, refspecs []string, g *gitRunner) (string, func(), error) {
	if err := os.MkdirAll(spec.CacheDir, 0o700); err != nil {
		return "", nil, fmt.Errorf("checking out sources: creating the git cache: %w", err)
	}
	repo := cacheRepo(spec.CacheDir, remote)
	lock, err := os.OpenFile(repo+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", nil, fmt.Errorf("checking out sources: locking the git cache: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return "", nil, fmt.Errorf("checking out sources: locking the git cache: %w", err)
	}
	unlock := func() { syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); lock.Close() }
	cg := &gitRunner{bin: g.bin, dir: spec.CacheDir, out: g.out, env: env}
	if _, err := os.Stat(filepath.Join(repo, "HEAD")); err != nil {
		if err := cg.run(ctx, spec.initArgs(repo, "--bare")...); err != nil {
			unlock()
			return "", nil, err
		}
		cg.dir = repo
		// The workspace fetches the job's commit by id from here.
		if err := cg.run(ctx, "config", "uploadpack.allowAnySHA1InWant", "true"); err != nil {
			unlock()
			return "", nil, err
		}
	} else {
		fmt.Fprintf(g.out, "Reusing the runner's git cache of this project\n")
	}
	cg.dir = repo
	fetch := append([]string{"fetch", "--quiet", "--prune"}, spec.FetchFlags...)
	if spec.Depth > 0 {
		fetch = append(fetch, "--depth", strconv.Itoa(spec.Depth))
	}
	fetch = append(fetch, remote)
	if len(refspecs) > 0 {
		if err := cg.run(ctx, append(fetch, mirrorRefspecs(refspecs)...)...); err != nil {
			unlock()
			return "", nil, err
		}
	}
	if spec.SHA != "" && cg.run(ctx, "cat-file", "-e", spec.SHA+"^{commit}") != nil {
		if err := cg.run(ctx, append(fetch, spec.SHA)...); err != nil {
			unlock()
			return "", nil, err
		}
	}
	return repo, unlock, nil
}
