package stepd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ExecEnvArg is the step server's first argument when it is a service
// container's entrypoint: it reads variables from its stdin, then execs
// the rest of its arguments (the service's own entrypoint and command)
// with them. A service's secret variables so reach its process without
// ever being in the container's configuration (docker inspect).
const ExecEnvArg = "exec-env"

// maxExecEnv bounds the variables ExecEnv reads.
const maxExecEnv = 1 << 20

// EncodeEnv is what the host writes to a service's stdin for ExecEnv:
// KEY=VALUE entries, each ended by a NUL (a value cannot hold one).
func EncodeEnv(env []string) ([]byte, error) {
	var b bytes.Buffer
	for _, kv := range env {
		if err := checkEnvEntry(kv); err != nil {
			return nil, err
		}
		b.WriteString(kv)
		b.WriteByte(0)
	}
	if b.Len() > maxExecEnv {
		return nil, fmt.Errorf("service variables: %d bytes, at most %d", b.Len(), maxExecEnv)
	}
	return b.Bytes(), nil
}

func checkEnvEntry(kv string) error {
	k, _, ok := strings.Cut(kv, "=")
	if !ok || k == "" || strings.ContainsAny(k, "\x00 \t\n") {
		// The key only: the value may be a secret.
		return fmt.Errorf("service variable %q: not KEY=VALUE with a valid key", strings.SplitN(kv, "=", 2)[0])
	}
	if strings.IndexByte(kv, 0) >= 0 {
		return fmt.Errorf("service variable %s: its value holds a NUL byte", k)
	}
	return nil
}

// ReadEnv reads EncodeEnv's entries until EOF and returns base with them
// set (a key of both takes the read value).
func ReadEnv(r io.Reader, base []string) ([]string, error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxExecEnv+1))
	if err != nil {
		return nil, fmt.Errorf("reading service variables: %w", err)
	}
	if len(raw) > maxExecEnv {
		return nil, fmt.Errorf("reading service variables: more than %d bytes", maxExecEnv)
	}
	if len(raw) > 0 && raw[len(raw)-1] != 0 {
		return nil, errors.New("reading service variables: the last entry is cut short (no NUL)")
	}
	env := append([]string(nil), base...)
	index := map[string]int{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		index[k] = i
	}
	for _, e := range bytes.Split(raw, []byte{0}) {
		if len(e) == 0 {
			continue
		}
		kv := string(e)
		if err := checkEnvEntry(kv); err != nil {
			return nil, err
		}
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			env[i] = kv
			continue
		}
		index[k] = len(env)
		env = append(env, kv)
	}
	return env, nil
}

// LookPath finds file as the engine would for a container's first
// process: a name without a slash is searched in env's PATH.
func LookPath(file string, env []string) (string, error) {
	if file == "" {
		return "", errors.New("no command to run")
	}
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH %s", file, path)
}

// ExecEnv reads variables from r (EncodeEnv's form, until EOF) and execs
// argv with the process's environment and them. It returns only on an
// error.
func ExecEnv(r io.Reader, argv []string) error {
	if len(argv) == 0 {
		return errors.New("no command to run")
	}
	env, err := ReadEnv(r, os.Environ())
	if err != nil {
		return err
	}
	bin, err := LookPath(argv[0], env)
	if err != nil {
		return err
	}
	if err := syscall.Exec(bin, argv, env); err != nil {
		return fmt.Errorf("starting %s: %w", argv[0], err)
	}
	return nil
}
