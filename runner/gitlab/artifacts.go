package gitlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"time"
)

// ArtifactOptions are the artifact_* query parameters of an upload.
type ArtifactOptions struct {
	// Type is GitLab's artifact_type; default "archive": the job's
	// downloadable artifact, listed on the job page. GitLab keeps one
	// archive per job.
	Type string
	// Format is artifact_format: "zip" (default, for archive), "gzip" or
	// "raw" (for report types).
	Format string
	// ExpireIn is GitLab's duration syntax, e.g. "30 days"; "" keeps the
	// project default.
	ExpireIn string
}

const (
	maxArtifactRedirects   = 3
	maxArtifactAttempts    = 3
	maxArtifactAttempts503 = 6
	maxBufferedArtifact    = 256 << 20
)

// ErrArtifactRefused: GitLab refused the artifact (403: not allowed or
// already uploaded; 413: too large).
var ErrArtifactRefused = errors.New("GitLab refused the artifact")

// UploadArtifact uploads size bytes (all when size < 0) from r as the
// job's artifact file name (POST /jobs/:id/artifacts, multipart part
// "file"). Upload before Finish: the job token stops working once the job
// has its final state. A 307 is followed to its Location on the same host
// (never elsewhere: the job token would travel with it), keeping the API
// path as gitlab-runner does; 503 is retried up to 6 tries, other
// transient failures up to 3. When r is not an io.ReadSeeker it is
// buffered in memory (up to 256 MiB) so that it can be sent again.
func (c *Client) UploadArtifact(ctx context.Context, id int64, token, name string, r io.Reader, size int64, o ArtifactOptions) error {
	op := fmt.Sprintf("uploading artifact %q of job %d", name, id)
	if o.Type == "" {
		o.Type = "archive"
	}
	if o.Format == "" {
		o.Format = "zip"
	}
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		if size > maxBufferedArtifact {
			return fmt.Errorf("%s: %d bytes is too large to buffer; pass an io.ReadSeeker", op, size)
		}
		b, err := io.ReadAll(io.LimitReader(r, maxBufferedArtifact+1))
		if err != nil {
			return fmt.Errorf("%s: reading artifact: %w", op, err)
		}
		if len(b) > maxBufferedArtifact {
			return fmt.Errorf("%s: too large to buffer; pass an io.ReadSeeker", op)
		}
		rs = bytes.NewReader(b)
	}
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	q := url.Values{}
	q.Set("artifact_type", o.Type)
	q.Set("artifact_format", o.Format)
	if o.ExpireIn != "" {
		q.Set("expire_in", o.ExpireIn)
	}
	target, err := url.Parse(c.endpoint(fmt.Sprintf("/jobs/%d/artifacts", id)) + "?" + q.Encode())
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	// gitlab-runner's: pauses of 1-5 s, 6 tries while GitLab answers 503,
	// 3 for other failures.
	bo := NewBackoff(time.Second, 5*time.Second)
	redirects := 0
	for attempt := 1; ; attempt++ {
		if _, err := rs.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("%s: rewinding artifact: %w", op, err)
		}
		var body io.Reader = rs
		if size >= 0 {
			body = io.LimitReader(rs, size)
		}
		resp, err := c.postMultipart(ctx, op, target.String(), token, name, body)
		if err == nil {
			switch resp.status {
			case http.StatusCreated, http.StatusOK:
				return nil
			case http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
				loc, lerr := target.Parse(resp.header.Get("Location"))
				switch {
				case lerr != nil || resp.header.Get("Location") == "":
					return &APIError{Op: op, Status: resp.status, Err: errors.New("redirect without a usable Location")}
				case loc.Hostname() != c.base.Hostname():
					return &APIError{Op: op, Status: resp.status, Err: fmt.Errorf("refusing redirect to another host %q", loc.Hostname())}
				case redirects >= maxArtifactRedirects:
					return &APIError{Op: op, Status: resp.status, Err: errors.New("too many redirects")}
				}
				// As gitlab-runner: only the scheme and host of Location
				// are taken, the API path and query are kept.
				redirects++
				next := *target
				next.Scheme, next.Host = loc.Scheme, loc.Host
				target = &next
				attempt--
				continue
			case http.StatusForbidden, http.StatusRequestEntityTooLarge:
				return &APIError{Op: op, Status: resp.status, Err: ErrArtifactRefused, Message: serverMessage(resp.body)}
			case http.StatusNotFound:
				return &APIError{Op: op, Status: resp.status, Err: ErrJobGone}
			}
			err = unexpected(op, resp)
		}
		limit := maxArtifactAttempts
		var ae *APIError
		if errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable {
			limit = maxArtifactAttempts503
		}
		if !IsRetryable(err) || attempt >= limit {
			return err
		}
		d := bo.Next(err)
		c.log.Warn("artifact upload failed; retrying", "job", id, "error", err, "wait", d)
		if serr := c.sleep(ctx, d); serr != nil {
			return errors.Join(err, serr)
		}
	}
}

func (c *Client) postMultipart(ctx context.Context, op, target, token, name string, body io.Reader) (*response, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormFile("file", name)
		if err == nil {
			_, err = io.Copy(part, body)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	r, err := c.do(ctx, call{op: op, method: http.MethodPost, url: target, raw: pr,
		ctype: mw.FormDataContentType(), jobToken: token})
	// Unblock the writer if the request ended before reading everything.
	pr.CloseWithError(errors.New("request finished"))
	return r, err
}
