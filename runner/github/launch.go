package github

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// launchSource fetches actions on the host (ActionSource): the launch
// service resolves owner/repo@ref to a tarball URL and a per-download
// token, which is used for that download only and never reaches the job.
type launchSource struct {
	hc               *http.Client
	launchURL, token string // the job token
	planID, jobID    string
}

type resolvedAction struct {
	Name           string `json:"name"`
	ResolvedSHA    string `json:"resolved_sha"`
	TarURL         string `json:"tar_url"`
	Authentication *struct {
		Token string `json:"token"`
	} `json:"authentication"`
}

// Fetch resolves and downloads repo at ref (§7).
func (s *launchSource) Fetch(ctx context.Context, repo, ref string) (io.ReadCloser, error) {
	if s.launchURL == "" {
		return nil, errors.New("fetching action: the job message names no launch service")
	}
	base, err := url.Parse(s.launchURL)
	if err != nil {
		return nil, fmt.Errorf("fetching action: launch URL: %w", err)
	}
	// The official client resolves an absolute path: a path in the
	// launch endpoint is dropped.
	target := base.ResolveReference(&url.URL{Path: "/actions/build/" + url.PathEscape(s.planID) + "/jobs/" + url.PathEscape(s.jobID) + "/runnerresolve/actions"}).String()
	var ans struct {
		Actions map[string]resolvedAction `json:"actions"`
	}
	_, err = do(ctx, s.hc, request{op: "resolving action " + repo + "@" + ref, method: http.MethodPost, url: target, auth: "Bearer " + s.token,
		body: map[string]any{"actions": []map[string]string{{"action": repo, "version": ref, "path": ""}}}}, &ans)
	if err != nil {
		return nil, err
	}
	var ra *resolvedAction
	for k, v := range ans.Actions {
		if strings.EqualFold(k, repo+"@"+ref) {
			ra = &v
		}
	}
	if ra == nil || ra.TarURL == "" {
		return nil, fmt.Errorf("resolving action %s@%s: the launch service did not resolve it", repo, ref)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ra.TarURL, nil)
	if err != nil {
		return nil, fmt.Errorf("downloading action %s@%s: %w", repo, ref, err)
	}
	if ra.Authentication != nil && ra.Authentication.Token != "" {
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("x-access-token:"+ra.Authentication.Token)))
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("downloading action %s@%s: %w", repo, ref, redactURLError(err))
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("downloading action %s@%s: HTTP %d", repo, ref, resp.StatusCode)
	}
	return resp.Body, nil
}
