package gitlab

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/airlock-ci/airlock/internal/atomicfile"
)

// RunnerCredentials is what GitLab returns for a verified or registered
// runner. Token is a secret: never log it.
type RunnerCredentials struct {
	ID             int64     `json:"id"`
	Token          string    `json:"token"`
	TokenExpiresAt time.Time `json:"token_expires_at"` // zero: never expires
}

// String shows the credentials without the token.
func (c RunnerCredentials) String() string {
	return fmt.Sprintf("runner %d (token redacted, expires %s)", c.ID, c.TokenExpiresAt.Format(time.RFC3339))
}

// GoString is String: %#v must not leak the token either.
func (c RunnerCredentials) GoString() string { return c.String() }

type credentialsJSON struct {
	ID             int64   `json:"id"`
	Token          string  `json:"token"`
	TokenExpiresAt *string `json:"token_expires_at"`
}

func (c credentialsJSON) convert(fallbackToken string) (RunnerCredentials, error) {
	rc := RunnerCredentials{ID: c.ID, Token: c.Token}
	if rc.Token == "" {
		rc.Token = fallbackToken
	}
	if c.TokenExpiresAt != nil && *c.TokenExpiresAt != "" {
		t, err := time.Parse(time.RFC3339, *c.TokenExpiresAt)
		if err != nil {
			return rc, fmt.Errorf("parsing token_expires_at: %w", err)
		}
		rc.TokenExpiresAt = t
	}
	return rc, nil
}

// VersionInfo is the runner description sent with runner calls.
type VersionInfo struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	Revision     string   `json:"revision"`
	Platform     string   `json:"platform"`
	Architecture string   `json:"architecture"`
	Executor     string   `json:"executor"`
	Shell        string   `json:"shell"`
	Features     Features `json:"features"`
}

func (c *Client) info() VersionInfo {
	return VersionInfo{
		Name:         "airlock",
		Version:      c.version,
		Revision:     c.revision,
		Platform:     goos,
		Architecture: goarch,
		Executor:     c.executor,
		Shell:        c.shell,
		Features:     c.features,
	}
}

// Verify checks a runner authentication token (glrt-...) created in GitLab
// and announces this runner manager (systemID). 403 gives ErrTokenInvalid,
// 422 ErrRunnerOrphaned.
func (c *Client) Verify(ctx context.Context, token, systemID string) (RunnerCredentials, error) {
	const op = "verifying runner token"
	var out RunnerCredentials
	err := c.retrying(ctx, 5, func() error {
		r, err := c.do(ctx, call{op: op, method: http.MethodPost, url: c.endpoint("/runners/verify"),
			body:   map[string]any{"token": token, "system_id": systemID, "info": c.info()},
			header: map[string]string{"RUNNER-TOKEN": token}})
		if err != nil {
			return err
		}
		switch r.status {
		case http.StatusOK:
			body := bytes.TrimSpace(r.body)
			// GitLab before 15.x answers a bare 200 without credentials.
			if len(body) == 0 || string(body) == "200" || string(body) == `"200"` {
				out = RunnerCredentials{Token: token}
				return nil
			}
			var cj credentialsJSON
			if err := json.Unmarshal(body, &cj); err != nil {
				return fmt.Errorf("%s: decoding response: %w", op, err)
			}
			out, err = cj.convert(token)
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			return nil
		case http.StatusForbidden:
			return &APIError{Op: op, Status: r.status, Err: ErrTokenInvalid}
		case http.StatusUnprocessableEntity:
			return &APIError{Op: op, Status: r.status, Err: ErrRunnerOrphaned, Message: serverMessage(r.body)}
		}
		return unexpected(op, r)
	})
	return out, err
}

// RegisterOptions are the legacy registration parameters.
type RegisterOptions struct {
	Description    string
	Tags           []string
	RunUntagged    bool
	Locked         bool
	ProtectedOnly  bool // access_level ref_protected
	MaximumTimeout time.Duration
	Paused         bool
}

// Register registers a runner with a legacy registration token (deprecated
// by GitLab since 15.6). 403 gives ErrTokenInvalid, 410
// ErrRegistrationDisabled (use a glrt- token and Verify instead).
func (c *Client) Register(ctx context.Context, registrationToken string, o RegisterOptions) (RunnerCredentials, error) {
	const op = "registering runner"
	body := map[string]any{
		"token":        registrationToken,
		"description":  o.Description,
		"run_untagged": o.RunUntagged,
		"locked":       o.Locked,
		"paused":       o.Paused,
		"info":         c.info(),
	}
	if len(o.Tags) > 0 {
		body["tag_list"] = strings.Join(o.Tags, ",")
	}
	if o.ProtectedOnly {
		body["access_level"] = "ref_protected"
	} else {
		body["access_level"] = "not_protected"
	}
	if o.MaximumTimeout > 0 {
		body["maximum_timeout"] = int64(o.MaximumTimeout / time.Second)
	}
	var out RunnerCredentials
	err := c.retrying(ctx, 5, func() error {
		r, err := c.do(ctx, call{op: op, method: http.MethodPost, url: c.endpoint("/runners"), body: body})
		if err != nil {
			return err
		}
		switch r.status {
		case http.StatusCreated:
			var cj credentialsJSON
			if err := json.Unmarshal(r.body, &cj); err != nil {
				return fmt.Errorf("%s: decoding response: %w", op, err)
			}
			if cj.Token == "" {
				return fmt.Errorf("%s: GitLab returned no runner token", op)
			}
			out, err = cj.convert("")
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			return nil
		case http.StatusForbidden:
			return &APIError{Op: op, Status: r.status, Err: errors.New("registration token is invalid")}
		case http.StatusGone:
			return &APIError{Op: op, Status: r.status, Err: ErrRegistrationDisabled}
		}
		return unexpected(op, r)
	})
	return out, err
}

// Unregister deletes the runner (DELETE /runners). Only for runners created
// with Register; a runner created in the GitLab UI is removed there, and
// its manager with UnregisterManager.
func (c *Client) Unregister(ctx context.Context, token string) error {
	return c.deleteRunner(ctx, "unregistering runner", "/runners", map[string]any{"token": token})
}

// UnregisterManager removes this runner manager (systemID) from a runner
// (DELETE /runners/managers).
func (c *Client) UnregisterManager(ctx context.Context, token, systemID string) error {
	return c.deleteRunner(ctx, "unregistering runner manager", "/runners/managers",
		map[string]any{"token": token, "system_id": systemID})
}

func (c *Client) deleteRunner(ctx context.Context, op, path string, body map[string]any) error {
	return c.retrying(ctx, 5, func() error {
		r, err := c.do(ctx, call{op: op, method: http.MethodDelete, url: c.endpoint(path), body: body})
		if err != nil {
			return err
		}
		switch r.status {
		case http.StatusNoContent, http.StatusOK:
			return nil
		case http.StatusForbidden:
			return &APIError{Op: op, Status: r.status, Err: ErrTokenInvalid}
		}
		return unexpected(op, r)
	})
}

// ResetToken rotates the runner token (do it at 75% of its lifetime, see
// RunnerConfig.TokenRotationDue). The old token stops working.
func (c *Client) ResetToken(ctx context.Context, token string) (RunnerCredentials, error) {
	const op = "resetting runner token"
	var out RunnerCredentials
	err := c.retrying(ctx, 3, func() error {
		r, err := c.do(ctx, call{op: op, method: http.MethodPost,
			url: c.endpoint("/runners/reset_authentication_token"), body: map[string]any{"token": token}})
		if err != nil {
			return err
		}
		switch r.status {
		case http.StatusCreated, http.StatusOK:
			var cj credentialsJSON
			if err := json.Unmarshal(r.body, &cj); err != nil {
				return fmt.Errorf("%s: decoding response: %w", op, err)
			}
			if cj.Token == "" {
				return fmt.Errorf("%s: GitLab returned no token", op)
			}
			out, err = cj.convert("")
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			return nil
		case http.StatusForbidden:
			return &APIError{Op: op, Status: r.status, Err: ErrTokenInvalid}
		}
		return unexpected(op, r)
	})
	return out, err
}

// systemIDFile is the file SystemID persists the id in.
const systemIDFile = ".runner_system_id"

var (
	systemIDRE     = regexp.MustCompile(`^[sr]_[0-9a-f]{12}$`)
	machineIDPaths = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}
)

// SystemID returns this machine's stable runner manager id, stored in
// <dir>/.runner_system_id: "s_" + 12 hex digits of
// HMAC-SHA256(key=machine-id, "airlock"), or "r_" + 12 random hex digits
// when the machine has no machine-id.
func SystemID(dir string) (string, error) {
	path := filepath.Join(dir, systemIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if systemIDRE.MatchString(id) {
			return id, nil
		}
		// A damaged file is replaced rather than trusted.
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("reading system id: %w", err)
	}
	id, err := newSystemID()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating directory for system id: %w", err)
	}
	if err := atomicfile.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("writing system id: %w", err)
	}
	return id, nil
}

func newSystemID() (string, error) {
	for _, p := range machineIDPaths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		mid := strings.TrimSpace(string(b))
		if mid == "" {
			continue
		}
		mac := hmac.New(sha256.New, []byte(mid))
		mac.Write([]byte("airlock"))
		return "s_" + hex.EncodeToString(mac.Sum(nil))[:12], nil
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("generating system id: %w", err)
	}
	return "r_" + hex.EncodeToString(r[:]), nil
}
