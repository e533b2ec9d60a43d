package github

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// LenientBool is a boolean GitHub may send as true, "True" or "true"
// (Newtonsoft-written files and messages mix both forms).
type LenientBool bool

// UnmarshalJSON accepts a JSON boolean, a string holding one
// (case-insensitive), or null (false).
func (b *LenientBool) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		*b = false
		return nil
	}
	var v bool
	if err := json.Unmarshal(data, &v); err == nil {
		*b = LenientBool(v)
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("decoding boolean %s: not a boolean or string", truncated(data))
	}
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true":
		*b = true
	case "false", "":
		*b = false
	default:
		return fmt.Errorf("decoding boolean: %q is neither true nor false", s)
	}
	return nil
}

// LenientInt is an integer GitHub may send as a number or as a string.
type LenientInt int64

// UnmarshalJSON accepts a JSON number, a string holding one, or null (0).
func (n *LenientInt) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		*n = 0
		return nil
	}
	var s string
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("decoding integer: %w", err)
		}
	} else {
		s = string(data)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return fmt.Errorf("decoding integer %s: not an integer", truncated(data))
	}
	*n = LenientInt(v)
	return nil
}

// truncated quotes at most 40 bytes of data for an error message.
func truncated(data []byte) string {
	if len(data) > 40 {
		return strconv.Quote(string(data[:40])) + "..."
	}
	return strconv.Quote(string(data))
}
