// Package local reads job files for `airlock exec`: YAML close to a GitLab
// CI job (image, services, before_script, script, after_script, variables, timeout)
// plus the credentials and egress the job declares.
package local

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/airlock-ci/airlock/runner/job"
)

// Default timeouts, as GitLab's.
const (
	DefaultTimeout      = time.Hour
	DefaultAfterTimeout = 5 * time.Minute
	MaxTimeout          = 7 * 24 * time.Hour
)

// Step names of a local job.
const (
	StepScript = "script"
	StepAfter  = "after_script"
)

// ParseError is a problem at a place in a job file.
type ParseError struct {
	File string
	Line int
	Key  string // dotted path, e.g. "variables.TOKEN"
	Msg  string
}

func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %s", e.Msg)
	return b.String()
}

// ReadFile reads and parses a job file.
func ReadFile(path string) (*job.Job, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading job file: %w", err)
	}
	return Parse(path, b)
}

// MaxFileSize bounds a job file.
const MaxFileSize = 1 << 20

// Parse parses a job file's contents; name is used in errors. Every problem
// found is reported, each with its line and key. The job gets a fresh id,
// source local, and the job file's base name as its name.
func Parse(name string, data []byte) (*job.Job, error) {
	if len(data) > MaxFileSize {
		return nil, &ParseError{File: name, Msg: fmt.Sprintf("file is %d bytes, more than the %d allowed", len(data), MaxFileSize)}
	}
	p := &parser{file: name}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ParseError{File: name, Msg: "empty job file"}
		}
		return nil, &ParseError{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &ParseError{File: name, Line: extra.Line, Msg: "more than one YAML document; a job file holds one job"}
	}
	if len(doc.Content) == 0 {
		return nil, &ParseError{File: name, Msg: "empty job file"}
	}
	j := p.job(doc.Content[0])
	if j != nil {
		j.ID = newID()
		j.Source = job.SourceLocal
		j.Name = strings.TrimSuffix(filepath.Base(name), filepath.Ext(name))
		if err := j.Validate(); err != nil && len(p.errs) == 0 {
			p.errs = append(p.errs, &ParseError{File: name, Msg: err.Error()})
		}
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return j, nil
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "local-" + hex.EncodeToString(b)
}

type parser struct {
	file string
	errs []error
}

func (p *parser) fail(n *yaml.Node, key, format string, a ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &ParseError{File: p.file, Line: line, Key: key, Msg: fmt.Sprintf(format, a...)})
}

var topKeys = []string{"image", "services", "variables", "timeout", "before_script", "script", "after_script", "after_script_timeout", "secrets", "egress"}

func (p *parser) job(n *yaml.Node) *job.Job {
	if n.Kind != yaml.MappingNode {
		p.fail(n, "", "a job file must be a mapping of keys (%s), not %s", strings.Join(topKeys, ", "), kind(n))
		return nil
	}
	// Steps run through the image's ENTRYPOINT unless image: entrypoint
	// says otherwise, as GitLab's do.
	j := &job.Job{Timeout: DefaultTimeout, EntrypointFromImage: true}
	var before, script, after []string
	afterTimeout := DefaultAfterTimeout
	var scriptNode *yaml.Node
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		if seen[key] {
			p.fail(k, key, "duplicate key")
			continue
		}
		seen[key] = true
		switch key {
		case "image":
			j.Image = p.image(v, j)
		case "services":
			j.Services = p.services(v)
		case "variables":
			j.Variables = p.variables(v)
		case "timeout":
			if d, ok := p.duration(v, key); ok {
				j.Timeout = d
			}
		case "after_script_timeout":
			if d, ok := p.duration(v, key); ok {
				afterTimeout = d
			}
		case "before_script":
			before = p.lines(v, key)
		case "script":
			scriptNode = v
			script = p.lines(v, key)
			if len(script) == 0 && v.Kind != yaml.ScalarNode || (v.Kind == yaml.ScalarNode && strings.TrimSpace(v.Value) == "") {
				p.fail(v, key, "must not be empty")
			}
		case "after_script":
			after = p.lines(v, key)
		case "secrets":
			j.Secrets = p.secrets(v)
		case "egress":
			j.Egress = p.egress(v)
		default:
			p.fail(k, key, "unknown key (known keys: %s)", strings.Join(topKeys, ", "))
		}
	}
	if scriptNode == nil {
		p.fail(n, "script", "required: the commands the job runs")
	}
	if j.Image == "" && !seen["image"] {
		p.fail(n, "image", "required (or give --image)")
	}
	j.Steps = append(j.Steps, job.Step{Name: StepScript, Script: append(before, script...), When: job.OnSuccess})
	if len(after) > 0 {
		j.Steps = append(j.Steps, job.Step{Name: StepAfter, Script: after, When: job.Always, Timeout: afterTimeout})
	}
	return j
}

func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!null":
		return "null"
	case "!!bool":
		return "a boolean"
	case "!!int", "!!float":
		return "a number"
	}
	return "a string"
}

func (p *parser) str(n *yaml.Node, key string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.fail(n, key, "must be a string, not %s", kind(n))
		return "", false
	}
	return n.Value, true
}

// image is the image's name, a string or image.name; image.entrypoint
// (a list, as GitLab's) goes to j.
func (p *parser) image(n *yaml.Node, j *job.Job) string {
	if n.Kind == yaml.MappingNode {
		var name string
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch k.Value {
			case "name":
				name, _ = p.str(v, "image.name")
			case "entrypoint":
				p.entrypoint(v, j)
			default:
				p.fail(k, "image."+k.Value, "unknown key (known keys: name, entrypoint)")
			}
		}
		if name == "" {
			p.fail(n, "image.name", "required")
		}
		return name
	}
	s, ok := p.str(n, "image")
	if ok && strings.TrimSpace(s) == "" {
		p.fail(n, "image", "must not be empty")
	}
	return s
}

func (p *parser) duration(n *yaml.Node, key string) (time.Duration, bool) {
	s, ok := p.str(n, key)
	if !ok {
		return 0, false
	}
	d, err := ParseDuration(s)
	if err != nil {
		p.fail(n, key, "%v", err)
		return 0, false
	}
	return d, true
}

// ParseDuration parses a timeout: a Go duration ("90s", "1h30m") or a
// bare number of seconds. It must be positive and at most MaxTimeout.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	d, err := time.ParseDuration(s)
	if err != nil {
		var secs int64
		if _, serr := fmt.Sscanf(s, "%d", &secs); serr == nil && fmt.Sprint(secs) == s {
			d, err = time.Duration(secs)*time.Second, nil
		}
	}
	if err != nil {
		return 0, fmt.Errorf("duration %q: want e.g. 90s, 10m or 1h30m", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("duration %q: must be positive", s)
	}
	if d > MaxTimeout {
		return 0, fmt.Errorf("duration %q: more than the %s allowed", s, MaxTimeout)
	}
	return d, nil
}

// lines reads a script: a string or a list of strings (nested lists are
// flattened, as GitLab does with !reference).
// entrypoint sets j's step entrypoint from image.entrypoint: a list of
// strings; [] leaves the image's, [""] or a plain shell clears it.
func (p *parser) entrypoint(n *yaml.Node, j *job.Job) {
	const key = "image.entrypoint"
	if n.Kind != yaml.SequenceNode {
		p.fail(n, key, "must be a list of strings (e.g. [\"\"] or [\"/entry.sh\"]), not %s", kind(n))
		return
	}
	ep := p.argv(n, key)
	switch {
	case len(ep) == 0:
	case job.ShellEntrypoint(ep):
		j.EntrypointFromImage = false
	case strings.TrimSpace(ep[0]) == "":
		p.fail(n, key, "its command is empty")
	default:
		j.EntrypointFromImage, j.StepEntrypoint = false, ep
	}
}

func (p *parser) lines(n *yaml.Node, key string) []string {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			p.fail(n, key, "must be a string or a list of strings, not null")
			return nil
		}
		return []string{n.Value}
	case yaml.SequenceNode:
		var out []string
		for i, c := range n.Content {
			k := fmt.Sprintf("%s[%d]", key, i)
			switch {
			case c.Kind == yaml.SequenceNode:
				out = append(out, p.lines(c, k)...)
			case c.Kind == yaml.ScalarNode && c.Tag != "!!null":
				if strings.TrimSpace(c.Value) == "" {
					p.fail(c, k, "empty command")
					continue
				}
				out = append(out, c.Value)
			default:
				p.fail(c, k, "must be a string, not %s", kind(c))
			}
		}
		return out
	}
	p.fail(n, key, "must be a string or a list of strings, not %s", kind(n))
	return nil
}

func (p *parser) variables(n *yaml.Node) []job.Variable { return p.variablesAt(n, "variables") }

// variablesAt reads a mapping of variables at key.
func (p *parser) variablesAt(n *yaml.Node, at string) []job.Variable {
	if n.Kind != yaml.MappingNode {
		p.fail(n, at, "must be a mapping of NAME: value, not %s", kind(n))
		return nil
	}
	var out []job.Variable
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := at + "." + k.Value
		if !job.ValidVarName(k.Value) {
			p.fail(k, key, "not a valid variable name (letters, digits and _, not starting with a digit)")
			continue
		}
		vr := job.Variable{Key: k.Value}
		switch {
		case v.Kind == yaml.ScalarNode && v.Tag != "!!null":
			vr.Value = v.Value
		case v.Kind == yaml.MappingNode:
			hasValue := false
			for i := 0; i+1 < len(v.Content); i += 2 {
				fk, fv := v.Content[i], v.Content[i+1]
				fkey := key + "." + fk.Value
				switch fk.Value {
				case "value":
					vr.Value, _ = p.str(fv, fkey)
					hasValue = true
				case "masked":
					vr.Masked = p.boolean(fv, fkey)
				case "file":
					vr.File = p.boolean(fv, fkey)
				case "raw":
					vr.Raw = p.boolean(fv, fkey)
				case "description", "expand":
				default:
					p.fail(fk, fkey, "unknown key (known keys: value, masked, file, raw, description)")
				}
			}
			if !hasValue {
				p.fail(v, key+".value", "required")
			}
		default:
			p.fail(v, key, "must be a string or a mapping with value:, not %s", kind(v))
			continue
		}
		out = append(out, vr)
	}
	return out
}

func (p *parser) boolean(n *yaml.Node, key string) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		p.fail(n, key, "must be true or false, not %s", kind(n))
		return false
	}
	return n.Value == "true"
}

// secrets reads `secrets:`: a list whose entries are a secret name or a
// mapping {name, var, delivery}.
func (p *parser) secrets(n *yaml.Node) []job.SecretRequest {
	if n.Kind != yaml.SequenceNode {
		p.fail(n, "secrets", "must be a list of secret names or {name, var, delivery} mappings, not %s", kind(n))
		return nil
	}
	var out []job.SecretRequest
	for i, c := range n.Content {
		key := fmt.Sprintf("secrets[%d]", i)
		var s job.SecretRequest
		switch c.Kind {
		case yaml.ScalarNode:
			s.Name, _ = p.str(c, key)
		case yaml.MappingNode:
			for i := 0; i+1 < len(c.Content); i += 2 {
				fk, fv := c.Content[i], c.Content[i+1]
				fkey := key + "." + fk.Value
				switch fk.Value {
				case "name":
					s.Name, _ = p.str(fv, fkey)
				case "var":
					s.Var, _ = p.str(fv, fkey)
					if s.Var != "" && !job.ValidVarName(s.Var) {
						p.fail(fv, fkey, "%q is not a valid variable name", s.Var)
					}
				case "delivery":
					d, _ := p.str(fv, fkey)
					s.Delivery = job.Delivery(d)
					if !s.Delivery.Valid() {
						p.fail(fv, fkey, "%q: must be env, file or proxy", d)
					}
				default:
					p.fail(fk, fkey, "unknown key (known keys: name, var, delivery)")
				}
			}
		default:
			p.fail(c, key, "must be a secret name or a mapping, not %s", kind(c))
			continue
		}
		if !job.ValidSecretName(s.Name) {
			p.fail(c, key+".name", "%q is not a valid secret name (letters, digits, '.', '_', '-')", s.Name)
			continue
		}
		out = append(out, s)
	}
	return out
}

// MaxServices bounds a job file's services, as GitLab jobs'.
const MaxServices = 16

var serviceKeys = []string{"name", "alias", "entrypoint", "command", "variables"}

// services reads `services:` as GitLab's: each an image name or a mapping
// {name, alias, entrypoint, command, variables}. A service is reached by
// its aliases (comma or space separated) and the two names GitLab derives
// from its image; a name an earlier service took is skipped.
func (p *parser) services(n *yaml.Node) []job.Service {
	if n.Kind != yaml.SequenceNode {
		p.fail(n, "services", "must be a list of images or {name, alias, entrypoint, command, variables} mappings, not %s", kind(n))
		return nil
	}
	if len(n.Content) > MaxServices {
		p.fail(n, "services", "%d services, at most %d", len(n.Content), MaxServices)
		return nil
	}
	taken := map[string]bool{}
	var out []job.Service
	for i, c := range n.Content {
		key := fmt.Sprintf("services[%d]", i)
		var svc job.Service
		var alias string
		switch c.Kind {
		case yaml.ScalarNode:
			svc.Image, _ = p.str(c, key)
		case yaml.MappingNode:
			for i := 0; i+1 < len(c.Content); i += 2 {
				fk, fv := c.Content[i], c.Content[i+1]
				fkey := key + "." + fk.Value
				switch fk.Value {
				case "name":
					svc.Image, _ = p.str(fv, fkey)
				case "alias":
					alias, _ = p.str(fv, fkey)
				case "entrypoint":
					svc.Entrypoint = p.argv(fv, fkey)
				case "command":
					svc.Command = p.argv(fv, fkey)
				case "variables":
					for _, v := range p.variablesAt(fv, fkey) {
						if v.Masked || v.File {
							p.fail(fv, fkey+"."+v.Key, "a service's variables are plain values (its container's configuration shows them)")
							continue
						}
						v.Public = true
						svc.Variables = append(svc.Variables, v)
					}
				default:
					p.fail(fk, fkey, "unknown key (known keys: %s)", strings.Join(serviceKeys, ", "))
				}
			}
		default:
			p.fail(c, key, "must be an image name or a mapping, not %s", kind(c))
			continue
		}
		if strings.TrimSpace(svc.Image) == "" || strings.ContainsAny(svc.Image, " \t\n") {
			p.fail(c, key+".name", "required: the service's image name (without spaces)")
			continue
		}
		for _, a := range append(strings.FieldsFunc(alias, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }), job.ServiceAliases(svc.Image)...) {
			if !job.ValidHostName(a) {
				p.fail(c, key+".alias", "%q is not a valid host name", a)
				continue
			}
			if !taken[a] {
				taken[a] = true
				svc.Aliases = append(svc.Aliases, a)
			}
		}
		out = append(out, svc)
	}
	return out
}

// argv reads a command as a list of strings.
func (p *parser) argv(n *yaml.Node, key string) []string {
	if n.Kind != yaml.SequenceNode {
		p.fail(n, key, "must be a list of strings, not %s", kind(n))
		return nil
	}
	var out []string
	for i, c := range n.Content {
		s, ok := p.str(c, fmt.Sprintf("%s[%d]", key, i))
		if !ok {
			return nil
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func (p *parser) egress(n *yaml.Node) []string {
	if n.Kind != yaml.SequenceNode {
		p.fail(n, "egress", "must be a list of host, host:port or *.suffix:port entries, not %s", kind(n))
		return nil
	}
	var out []string
	for i, c := range n.Content {
		key := fmt.Sprintf("egress[%d]", i)
		s, ok := p.str(c, key)
		if !ok {
			continue
		}
		if strings.TrimSpace(s) == "" {
			p.fail(c, key, "empty entry")
			continue
		}
		out = append(out, s)
	}
	return out
}
