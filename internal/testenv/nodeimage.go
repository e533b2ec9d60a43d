package testenv

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// NodeImage is a local image with busybox, the host's node and bash (with
// their shared libraries), for tests of JavaScript actions and of shells.
// It is built with the engine's import (no registry) the first time a
// test needs it.
const NodeImage = "airlock-test:node-bash"

var nodeImage struct {
	once sync.Once
	err  error
}

// RequireNodeImage requires Docker and NodeImage, building the image from
// the host's node binary and busybox when it is missing. Without node on
// the host it skips (or fails when AIRLOCK_TEST_REQUIRE names "node").
func RequireNodeImage(t testing.TB) string {
	t.Helper()
	RequireDocker(t)
	nodeImage.once.Do(func() { nodeImage.err = ensureNodeImage() })
	if nodeImage.err != nil {
		missing(t, "node", "cannot build "+NodeImage+": "+nodeImage.err.Error())
	}
	return NodeImage
}

func ensureNodeImage() error {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", DockerSocket())
	}}}
	resp, err := c.Get("http://docker/images/" + NodeImage + "/json")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return fmt.Errorf("no node on the host (apt-get install nodejs): %w", err)
	}
	if node, err = filepath.EvalSymlinks(node); err != nil {
		return err
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		return fmt.Errorf("no bash on the host: %w", err)
	}
	if bash, err = filepath.EvalSymlinks(bash); err != nil {
		return err
	}
	libs, err := sharedLibs(node)
	if err != nil {
		return err
	}
	bashLibs, err := sharedLibs(bash)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, l := range libs {
		seen[l] = true
	}
	for _, l := range bashLibs {
		if !seen[l] {
			libs = append(libs, l)
		}
	}
	applets, err := exec.Command("/bin/busybox", "--list-full").Output()
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeNodeRoot(pw, node, bash, libs, strings.Fields(string(applets)))) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	q := url.Values{"fromSrc": {"-"}, "repo": {"airlock-test"}, "tag": {"node-bash"},
		"changes": {"ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://docker/images/create?"+q.Encode(), pr)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err = c.Do(req)
	if err != nil {
		return fmt.Errorf("importing %s: %w", NodeImage, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || strings.Contains(string(body), `"error"`) {
		return fmt.Errorf("importing %s: %s: %.300s", NodeImage, resp.Status, body)
	}
	return nil
}

// sharedLibs lists the absolute paths ldd prints for bin.
func sharedLibs(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		for _, f := range strings.Fields(sc.Text()) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
				break
			}
		}
	}
	if len(libs) == 0 {
		return nil, errors.New("ldd printed no libraries")
	}
	return libs, nil
}

func writeNodeRoot(w io.Writer, node, bash string, libs, applets []string) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	mkdir := func(dir string, mode int64) error {
		dir = strings.Trim(dir, "/")
		if dir == "" || dirs[dir] {
			return nil
		}
		dirs[dir] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode})
	}
	parents := func(p string) error {
		parts := strings.Split(strings.Trim(filepath.Dir(p), "/"), "/")
		for i := range parts {
			if err := mkdir(strings.Join(parts[:i+1], "/"), 0o755); err != nil {
				return err
			}
		}
		return nil
	}
	file := func(src, dst string) error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if err := parents(dst); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(dst, "/"), Mode: 0o755, Size: st.Size()}); err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		return err
	}
	for _, d := range []struct {
		p string
		m int64
	}{{"tmp", 0o1777}, {"builds", 0o777}, {"etc", 0o755}, {"home", 0o755}, {"run", 0o755}, {"proc", 0o755}, {"sys", 0o755}, {"dev", 0o755}} {
		if err := mkdir(d.p, d.m); err != nil {
			return err
		}
	}
	if err := file("/bin/busybox", "/bin/busybox"); err != nil {
		return err
	}
	for _, a := range applets {
		if a == "bin/busybox" || a == "/bin/busybox" || strings.HasSuffix(a, "/bash") {
			continue
		}
		if err := parents(a); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(a, "/"), Linkname: "/bin/busybox", Mode: 0o777}); err != nil {
			return err
		}
	}
	if err := file(node, "/usr/bin/node"); err != nil {
		return err
	}
	if err := file(bash, "/bin/bash"); err != nil {
		return err
	}
	for _, l := range libs {
		if err := file(l, l); err != nil {
			return err
		}
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nbuild:x:1000:1000:build:/home/build:/bin/sh\n"
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd))}); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, passwd); err != nil {
		return err
	}
	return tw.Close()
}
