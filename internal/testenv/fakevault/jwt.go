package fakevault

import (
	"net/http"
	"strings"
	"time"
)

// jwtRole is a JWT auth role: logins presenting jwt for role get a token
// with policies.
type jwtRole struct {
	jwt      string
	policies []string
	ttl      time.Duration
}

// AddJWTRole enables JWT login at auth/<path>/login for role, accepting
// exactly jwt (the fake does not verify signatures: tests hand it the
// token GitLab would have signed).
func (s *Server) AddJWTRole(path, role, jwt string, policies []string, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jwtRoles == nil {
		s.jwtRoles = map[string]jwtRole{}
	}
	s.jwtRoles[strings.Trim(path, "/")+"\x00"+role] = jwtRole{jwt: jwt, policies: policies, ttl: ttl}
}

// PutKV1 stores a KV v1 secret at mount/path.
func (s *Server) PutKV1(mount, path string, data map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv1 == nil {
		s.kv1 = map[string]map[string]any{}
	}
	s.kv1[mount+"/"+path] = data
}

// Tokens returns every token the fake issued by login (JWT).
func (s *Server) JWTTokens() []Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Token
	for _, t := range s.tokens {
		if t.Meta["auth"] == "jwt" {
			out = append(out, *t)
		}
	}
	return out
}

// jwtLogin answers POST auth/<path>/login for a JWT role (called with mu
// held); it reports whether path was a JWT login.
func (s *Server) jwtLogin(w http.ResponseWriter, r *http.Request, path string) bool {
	mount, ok := strings.CutSuffix(path, "/login")
	if !ok || !strings.HasPrefix(mount, "auth/") || r.Method != http.MethodPost {
		return false
	}
	mount = strings.TrimPrefix(mount, "auth/")
	if mount == "approle" || mount == "token" {
		return false
	}
	var req map[string]any
	if err := decode(r, &req); err != nil {
		vaultErr(w, http.StatusBadRequest, "error parsing JSON")
		return true
	}
	jwt, _ := req["jwt"].(string)
	role, _ := req["role"].(string)
	for k := range req {
		if k != "jwt" && k != "role" {
			vaultErr(w, http.StatusBadRequest, "unknown field "+k)
			return true
		}
	}
	jr, ok := s.jwtRoles[mount+"\x00"+role]
	if !ok {
		vaultErr(w, http.StatusBadRequest, "role \""+role+"\" could not be found")
		return true
	}
	if jwt == "" || jwt != jr.jwt {
		vaultErr(w, http.StatusBadRequest, "error validating token: invalid signature")
		return true
	}
	t := s.issue(nil, jr.policies, map[string]string{"auth": "jwt", "role": role}, jr.ttl, 0)
	writeJSON(w, http.StatusOK, authBody(t))
	return true
}

// revokeSelf answers auth/token/revoke-self (mu held).
func (s *Server) revokeSelf(w http.ResponseWriter, tok *Token) {
	tok.Revoked = true
	w.WriteHeader(http.StatusNoContent)
}

// readKV1 answers a KV v1 read (mu held); it reports whether path held one.
func (s *Server) readKV1(w http.ResponseWriter, path string) bool {
	data, ok := s.kv1[path]
	if !ok {
		return false
	}
	writeJSON(w, http.StatusOK, map[string]any{"request_id": randHex(8), "lease_id": "", "lease_duration": 0,
		"renewable": false, "data": data})
	return true
}
