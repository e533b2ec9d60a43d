package mask

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
)

// MinLength is the shortest value the masker accepts. Shorter values would
// match ordinary words and numbers in job output; GitLab imposes the same
// limit on masked variables.
const MinLength = 8

// Replacement is written in place of every masked region.
const Replacement = "[MASKED]"

// closePartialMin is the shortest held-back prefix of a value that Close
// masks when the stream ends in the middle of a value: a stream cut off
// there reveals at most closePartialMin-1 bytes of it.
const closePartialMin = MinLength / 2

// Validate reports whether value is long enough to be masked in job output.
// The error never contains the value.
func Validate(value string) error {
	if len(value) < MinLength {
		return fmt.Errorf("validating secret value: it is %d bytes long, the minimum is %d: "+
			"shorter values match ordinary words and numbers, so job output could not be masked reliably; "+
			"use a longer value", len(value), MinLength)
	}
	return nil
}

// charset is a set of bytes.
type charset [4]uint64

func (c *charset) has(b byte) bool { return c[b>>6]&(1<<(b&63)) != 0 }

func (c *charset) subsetOf(d *charset) bool {
	for i := range c {
		if c[i]&^d[i] != 0 {
			return false
		}
	}
	return true
}

// newCharset builds a set from ranges written as "AZaz09" pairs plus single
// bytes in extra.
func newCharset(ranges, extra string) charset {
	var c charset
	for i := 0; i+1 < len(ranges); i += 2 {
		for b := int(ranges[i]); b <= int(ranges[i+1]); b++ {
			c[b>>6] |= 1 << (b & 63)
		}
	}
	for i := 0; i < len(extra); i++ {
		b := extra[i]
		c[b>>6] |= 1 << (b & 63)
	}
	return c
}

var (
	githubBody = newCharset("AZaz09", "_")
	gitlabBody = newCharset("AZaz09", "._=-")
	awsBody    = newCharset("AZ27", "")
	slackBody  = newCharset("AZaz09", "-")
	stripeBody = newCharset("AZaz09", "")
)

// tokenPrefix describes a well-known credential format: the prefix and the
// run of body bytes after it are masked together when the body has at least
// minBody bytes (the prefix alone is not a token).
type tokenPrefix struct {
	prefix  string
	body    *charset
	minBody int
}

// tokenPrefixes is the one table of well-known token formats.
var tokenPrefixes = []tokenPrefix{
	// GitHub: personal, OAuth, user-to-server, server-to-server, refresh,
	// fine-grained personal access tokens.
	{"ghp_", &githubBody, 1},
	{"gho_", &githubBody, 1},
	{"ghu_", &githubBody, 1},
	{"ghs_", &githubBody, 1},
	{"ghr_", &githubBody, 1},
	{"github_pat_", &githubBody, 1},
	// GitLab (gitlab-runner's FF_MASK_ALL_DEFAULT_TOKENS list).
	{"glpat-", &gitlabBody, 1},
	{"glcbt-", &gitlabBody, 1},
	{"glrt-", &gitlabBody, 1},
	{"glrtr-", &gitlabBody, 1},
	{"gldt-", &gitlabBody, 1},
	{"glptt-", &gitlabBody, 1},
	{"glft-", &gitlabBody, 1},
	{"glimt-", &gitlabBody, 1},
	{"glagent-", &gitlabBody, 1},
	{"glsoat-", &gitlabBody, 1},
	{"gloas-", &gitlabBody, 1},
	{"glffct-", &gitlabBody, 1},
	{"gltok-", &gitlabBody, 1},
	// AWS access key ids: 4-byte prefix and 16 base32 characters.
	{"AKIA", &awsBody, 16},
	{"ASIA", &awsBody, 16},
	// Slack bot, user and app tokens.
	{"xoxb-", &slackBody, 1},
	{"xoxp-", &slackBody, 1},
	{"xoxa-", &slackBody, 1},
	// Stripe live secret key.
	{"sk_live_", &stripeBody, 1},
}

// prefixCovers[k][j] says a token of kind j contains every token of kind k
// that starts inside its body: kind k's body bytes are body bytes of j.
var prefixCovers = func() [][]bool {
	c := make([][]bool, len(tokenPrefixes))
	for k := range tokenPrefixes {
		c[k] = make([]bool, len(tokenPrefixes))
		for j := range tokenPrefixes {
			c[k][j] = tokenPrefixes[k].body.subsetOf(tokenPrefixes[j].body)
		}
	}
	return c
}()

// variants returns value followed by every encoding of it that differs from
// it and is at least MinLength bytes long:
//   - base64, standard and URL alphabets, padded and unpadded;
//   - for each alignment 0, 1, 2 of the value inside a larger base64 blob,
//     the characters that depend on the value's bytes only;
//   - url.QueryEscape and url.PathEscape;
//   - the inside of a JSON string, with and without HTML escaping.
//
// Duplicates are possible; the trie merges them.
func variants(value string) []string {
	out := []string{value}
	add := func(s string) {
		if s != value && len(s) >= MinLength {
			out = append(out, s)
		}
	}
	b := []byte(value)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		add(enc.EncodeToString(b))
		raw := enc.WithPadding(base64.NoPadding)
		add(raw.EncodeToString(b))
		for k := 0; k < 3; k++ {
			add(innerBase64(raw, b, k))
		}
	}
	add(url.QueryEscape(value))
	add(url.PathEscape(value))
	if j, err := json.Marshal(value); err == nil {
		add(string(j[1 : len(j)-1]))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(value); err == nil {
		j := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		add(string(j[1 : len(j)-1]))
	}
	return out
}

// innerBase64 returns the characters of the unpadded encoding of a blob in
// which v starts at byte offset k (0..2 mod 3) that depend on v alone:
// character j covers bits [6j, 6j+6) of the blob, and v covers bits
// [8k, 8(k+len(v))).
func innerBase64(enc *base64.Encoding, v []byte, k int) string {
	blob := make([]byte, k+len(v))
	copy(blob[k:], v)
	s := enc.EncodeToString(blob)
	from := (8*k + 5) / 6
	to := 8 * (k + len(v)) / 6
	if to <= from {
		return ""
	}
	return s[from:to]
}
