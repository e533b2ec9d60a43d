package gitlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// ErrArtifactUnavailable: GitLab will not give the dependency's artifacts
// (401: the token is not a running job's, 403: not allowed, 404: none).
// Final: retrying cannot help.
var ErrArtifactUnavailable = errors.New("dependency artifacts are unavailable")

const (
	// defaultDownloadAttempts is used when the job sets no
	// ARTIFACT_DOWNLOAD_ATTEMPTS (gitlab-runner's default is 1).
	defaultDownloadAttempts = 3
	maxDownloadRedirect     = 5
	downloadRetryWait       = time.Second
)

// DownloadArtifacts writes the archive of job id's artifacts to w (GET
// /jobs/:id/artifacts, research §4) authenticated with token, the running
// job's own. The first attempt asks for a direct download; a 302/307 to
// object storage is followed, and the job token is sent only to GitLab's
// own host, never to another one (a presigned URL needs none). 401, 403
// and 404 wrap ErrArtifactUnavailable and are final; other failures are
// retried (attempts in all, 3 when it is 0 or less, a second apart), w
// being truncated in between when it is an *os.File; each retry is said
// in log (the job log; nil: the runner's only).
func (c *Client) DownloadArtifacts(ctx context.Context, id int64, token string, attempts int, w, log io.Writer) error {
	op := fmt.Sprintf("downloading artifacts of job %d", id)
	if attempts <= 0 {
		attempts = defaultDownloadAttempts
	}
	var err error
	for attempt := 1; attempt <= attempts; attempt++ {
		if attempt > 1 {
			if f, ok := w.(*os.File); ok {
				if terr := errors.Join(f.Truncate(0), seekStart(f)); terr != nil {
					return fmt.Errorf("%s: %w", op, terr)
				}
			}
			c.log.Warn("artifact download failed; retrying", "job", id, "attempt", attempt, "of", attempts, "error", err)
			if log != nil {
				fmt.Fprintf(log, "WARNING: Downloading artifacts of job %d failed: %v\nRetrying (attempt %d of %d, ARTIFACT_DOWNLOAD_ATTEMPTS)\n", id, err, attempt, attempts)
			}
			if serr := c.sleep(ctx, downloadRetryWait); serr != nil {
				return errors.Join(err, serr)
			}
		}
		err = c.downloadOnce(ctx, op, id, token, attempt == 1, w)
		if err == nil || errors.Is(err, ErrArtifactUnavailable) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

func seekStart(f *os.File) error {
	_, err := f.Seek(0, io.SeekStart)
	return err
}

func (c *Client) downloadOnce(ctx context.Context, op string, id int64, token string, direct bool, w io.Writer) error {
	target := c.endpoint(fmt.Sprintf("/jobs/%d/artifacts", id))
	if direct {
		target += "?direct_download=true"
	}
	for hops := 0; ; hops++ {
		u, err := url.Parse(target)
		if err != nil {
			return &APIError{Op: op, Err: fmt.Errorf("redirect to an unusable URL: %w", err)}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		req.Header.Set("User-Agent", c.userAgent)
		// The job token goes to GitLab only: object storage gets a
		// presigned URL and must never see it.
		if sameOrigin(u, c.base) {
			req.Header.Set("JOB-TOKEN", token)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return &APIError{Op: op, Err: err, retryable: ctx.Err() == nil}
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			_, err := io.Copy(w, resp.Body)
			resp.Body.Close()
			if err != nil {
				return &APIError{Op: op, Status: resp.StatusCode, Err: fmt.Errorf("reading artifacts: %w", err), retryable: ctx.Err() == nil}
			}
			return nil
		case resp.StatusCode == http.StatusFound || resp.StatusCode == http.StatusTemporaryRedirect ||
			resp.StatusCode == http.StatusMovedPermanently || resp.StatusCode == http.StatusSeeOther ||
			resp.StatusCode == http.StatusPermanentRedirect:
			loc, lerr := u.Parse(resp.Header.Get("Location"))
			resp.Body.Close()
			if lerr != nil || resp.Header.Get("Location") == "" || (loc.Scheme != "https" && loc.Scheme != "http") {
				return &APIError{Op: op, Status: resp.StatusCode, Err: errors.New("redirect without a usable Location")}
			}
			if hops >= maxDownloadRedirect {
				return &APIError{Op: op, Status: resp.StatusCode, Err: errors.New("too many redirects")}
			}
			target = loc.String()
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		r := &response{status: resp.StatusCode, header: resp.Header, body: body}
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			return &APIError{Op: op, Status: resp.StatusCode, Err: ErrArtifactUnavailable, Message: serverMessage(body)}
		}
		ae := unexpected(op, r).(*APIError)
		ae.retryable = true // gitlab-runner retries every other status
		return ae
	}
}

func sameOrigin(u, base *url.URL) bool {
	return strings.EqualFold(u.Scheme, base.Scheme) && strings.EqualFold(u.Host, base.Host)
}
